#!/usr/bin/env bash
# train_cli.sh MRANK: `mrank train` end to end on a tiny model (seconds): the three stages on
# inline data in the spec's jsonl format; an interrupted run resumed from its state
# (--stop-after, --resume) gives byte-identical parameters to an uninterrupted run of the same
# steps (lm, rerank and compensate); --cascade-weight reaches the loss; the outputs load in
# `mrank score` (full checkpoint, and with the PEFT adapters merged) and give finite scores;
# `mrank eval` runs on a tiny BEIR collection and its BM25 figures follow the metric
# definitions; --mimetic sets the init it documents.
set -euo pipefail
mrank=$(realpath "$1")
cd "$(dirname "$0")/.."
root=$PWD
tok=$root/third_party/tokenizers/llama2/tokenizer.json
. tests/lib/harness.bash   # $work (removed at exit) and fail
mr_harness train_cli
cd "$work"
export OMP_NUM_THREADS=1

cat > lm.txt <<'TXT'
The jury said Friday an investigation of the recent primary election produced no evidence.
The wing in a slipstream was studied by experiment, and the lift increased with the speed.
A dog is a domesticated carnivore of the family Canidae; it barks at strangers.
Heat transfer in a boundary layer depends on the Mach number and on the wall temperature.
TXT
cat > rr.jsonl <<'TXT'
{"query": "what makes a wing lift", "pos": ["the wing in a slipstream gives more lift"], "neg": ["dogs bark at strangers", "the jury said nothing", "heat moves through the wall"], "pos_scores": [2.0], "neg_scores": [0.1, 0.0, 0.3]}
{"query": "dog", "pos": ["a domesticated carnivore that barks"], "neg": ["a primary election", "a boundary layer", "the Mach number", "an investigation"], "pos_scores": [1.5], "neg_scores": [0.0, 0.2, 0.1, 0.0], "prompt": "Is B a definition of A?"}
{"query": "heat transfer at high speed", "pos": ["heat transfer depends on the Mach number"], "neg": ["the jury said Friday", "a dog barks"], "pos_scores": [3.0], "neg_scores": [0.0, 0.1]}
TXT
new="--tokenizer $tok --layers 2 --hidden 16 --heads 2 --kv-heads 1 --ff 32 --seq-len 16"
common="--quiet --seed 7"
# stage 1: LM from scratch
"$mrank" train --stage lm --data lm.txt --out lmA $new --steps 6 --batch 2 $common
"$mrank" train --stage lm --data lm.txt --out lmB $new --steps 6 --batch 2 $common --stop-after 4
[ ! -f lmB/model.safetensors ] || fail "stopped run wrote the final checkpoint"
"$mrank" train --stage lm --data lm.txt --out lmB $new --steps 6 --batch 2 $common --resume
cmp lmA/model.safetensors lmB/model.safetensors || fail "lm: resumed run differs"
[ -f lmA/config.json ] && [ -f lmA/tokenizer.json ] || fail "lm: missing HF files"
# --mimetic S: with lr 0 the written model is the new model's init; each KV head's k_proj is
# the q_proj of the first query head sharing it, both S times the seeded values
"$mrank" train --stage lm --data lm.txt --out lmM $new --steps 1 --batch 1 --lr 0 \
    --weight-decay 0 --mimetic 3 $common
/usr/bin/python3 - lmM <<'PY' || fail "--mimetic: q/k projections not as documented"
import json, struct, sys
import numpy as np
def load(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    return {k: np.frombuffer(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]],
                             dtype=np.float32).reshape(v["shape"])
            for k, v in h.items() if k != "__metadata__"}
d = sys.argv[1]
a, z = load(d + "/model.safetensors"), load(d + "/init/model.safetensors")
for l in range(2):
    p = "model.layers.%d.self_attn." % l
    q, k, q0, k0 = a[p + "q_proj.weight"], a[p + "k_proj.weight"], z[p + "q_proj.weight"], z[p + "k_proj.weight"]
    hd = 8  # hidden 16 / 2 heads; 1 KV head shared by query heads 0 and 1
    # rtol 1e-6: one f32 multiplication on each side (rounding 6e-8 at most)
    assert np.allclose(q[:hd], 3 * q0[:hd], rtol=1e-6), "q head 0 not scaled"
    assert np.array_equal(q[hd:], q0[hd:]), "q head 1 changed"
    assert np.array_equal(k, q[:hd]), "k_proj is not q head 0"
    assert not np.array_equal(k0, q0[:hd])
PY
# stage 2: re-ranker fine-tuning (cascade + teacher, accumulation)
rr="--data rr.jsonl --steps 5 --batch 2 --group 3 --max-len 48 --accum 2 $common"
"$mrank" train --stage rerank --init lmA --out rrA $rr
"$mrank" train --stage rerank --init lmA --out runs/b/rrB $rr --stop-after 2  # parents made
"$mrank" train --stage rerank --init lmA --out runs/b/rrB $rr --resume
cmp rrA/model.safetensors runs/b/rrB/model.safetensors || fail "rerank: resumed run differs"
# --cascade-weight: 1 is the default (same bytes), another weight trains another model, 0 is refused
"$mrank" train --stage rerank --init lmA --out rrW1 $rr --cascade-weight 1
cmp rrA/model.safetensors rrW1/model.safetensors || fail "--cascade-weight 1 is not the default"
"$mrank" train --stage rerank --init lmA --out rrW3 $rr --cascade-weight 3
! cmp -s rrA/model.safetensors rrW3/model.safetensors || fail "--cascade-weight 3 changed nothing"
if msg=$("$mrank" train --stage rerank --init lmA --out rrW0 $rr --cascade-weight 0 2>&1); then
    fail "--cascade-weight 0 accepted"
fi
case $msg in *"--cascade-weight must be > 0"*) ;; *) fail "--cascade-weight 0: '$msg'" ;; esac
# stage 3: compensation adapters (vertical + width 2), interrupted inside the second adapter
cp="--data rr.jsonl --steps 3 --batch 1 --group 3 --max-len 48 --lora-rank 2 --lora-alpha 4 --ratios 2 --lr 1e-2 $common"
"$mrank" train --stage compensate --init rrA --out cA $cp
"$mrank" train --stage compensate --init rrA --out cB $cp --stop-after 4
[ -f cB/vertical/adapter_config.json ] && [ ! -d cB/width-2 ] || fail "compensate: stop point"
"$mrank" train --stage compensate --init rrA --out cB $cp --resume
for a in vertical width-2; do
    cmp cA/$a/adapter_model.safetensors cB/$a/adapter_model.safetensors ||
        fail "compensate $a: resumed run differs"
done
# outputs load in the engine
out=$("$mrank" score --model rrA --query "wing lift" --passage "the wing gives lift" \
      --passage "dogs bark" --exits 1,2)
echo "$out" | awk 'NF != 2 { exit 1 } { for (i = 1; i <= 2; i++) if ($i != $i + 0) exit 1 }' ||
    fail "score output: $out"
out2=$("$mrank" score --model rrA --adapter cA/vertical --adapter cA/width-2 --query "wing lift" \
      --passage "the wing gives lift" --passage "dogs bark" --exits 1,2 --compress-ratio 2 \
      --compress-layers 1)
[ "$(echo "$out2" | wc -l)" = 2 ] || fail "score with adapters: $out2"
[ "$out" != "$out2" ] || fail "adapters changed nothing"
# the sub-model options are score's: tokenize names the one it refuses (not its value)
if msg=$("$mrank" tokenize --model rrA --query q --passage p --exits 1 2>&1); then
    fail "tokenize accepted --exits"
fi
case $msg in *"option --exits only applies to mrank score"*) ;; *) fail "tokenize --exits: $msg" ;; esac
# eval on a tiny collection: 2 queries, 3 docs; q1 judged (d2 grade 2, d3 grade 1), q2 unjudged
mkdir -p coll/qrels
printf '{"_id": "d1", "title": "", "text": "dogs bark"}\n{"_id": "d2", "title": "wing", "text": "the wing gives lift"}\n{"_id": "d3", "text": "lift of a wing"}\n' > coll/corpus.jsonl
printf '{"_id": "1", "text": "wing lift"}\n{"_id": "2", "text": "dogs"}\n' > coll/queries.jsonl
printf 'query-id\tcorpus-id\tscore\n1\td2\t2\n1\td3\t1\n1\td1\t-1\n' > coll/qrels/test.tsv
printf '1 Q0 d1 1 3.0 bm25\n1 Q0 d2 2 2.0 bm25\n1 Q0 d3 3 1.0 bm25\n2 Q0 d1 1 1.0 bm25\n' > coll/bm25_top100.run
ev=$("$mrank" eval --model rrA --collection coll --exits 1,2 --out ev.run --quiet)
echo "$ev"
# BM25 order d1 d2 d3: DCG = 2/log2(3) + 1/2, IDCG = 2 + 1/log2(3); MRR = 1/2. Squared
# differences under 1e-8: within 1e-4, as eval prints 4 decimals (rounding up to 5e-5).
echo "$ev" | awk '$1 == "bm25" { want = (2 / (log(3) / log(2)) + 0.5) / (2 + 1 / (log(3) / log(2)));
    if (($2 - want)^2 > 1e-8 || ($3 - 0.5)^2 > 1e-8) exit 1; ok = 1 } END { exit !ok }' ||
    fail "eval bm25 figures"
# random order, 3 candidates, gains {0,2,1}: E[DCG] = 3 (1 + 1/log2 3 + 1/2) / 3;
# E[RR] = 2/3 + 1/3 * 1/2 = 5/6
echo "$ev" | awk '$1 == "random" { l3 = log(3) / log(2); want = (1 + 1 / l3 + 0.5) / (2 + 1 / l3);
    if (($3 - want)^2 > 1e-8 || ($4 - 5 / 6)^2 > 1e-8) exit 1; ok = 1 } END { exit !ok }' ||
    fail "eval random figures"
[ "$(wc -l < ev.run)" = 3 ] || fail "eval run lines"
echo "train_cli: ok"
