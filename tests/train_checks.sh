#!/usr/bin/env bash
# train_checks.sh MRANK: `mrank train` refuses bad input and bad combinations up front (seconds,
# a 2-layer model): a width step that cannot compress (it looped forever in compensate) and a
# cascade step above the deepest exit; --resume of a state of another run (seed, lr, stage,
# data) or with a step out of range, an older-format state still resumed byte-identically;
# --resume with nothing to resume says so; data faults at load with path:line (teacher scores on
# some lines only, a non-finite score, a row over the pass's length, a token outside the
# model's vocabulary); --query-max-len leaving no passage tokens; --batch over the LM limit;
# compensate with no adapter; paths longer than the old fixed buffers.
set -euo pipefail
mrank=$(realpath "$1")
cd "$(dirname "$0")/.."
root=$PWD
tok=$root/third_party/tokenizers/llama2/tokenizer.json
. tests/lib/harness.bash   # $work (removed at exit) and fail
mr_harness train_checks
cd "$work"
export OMP_NUM_THREADS=1
# refuse NAME PATTERN CMD...: CMD fails (within 60 s) and its output contains PATTERN
refuse() {
    local name=$1 pat=$2 msg
    shift 2
    if msg=$(timeout 60 "$@" 2>&1); then fail "$name: accepted"; fi
    case $msg in *"$pat"*) ;; *) fail "$name: expected '$pat', got: $msg" ;; esac
}

cat > lm.txt <<'TXT'
The wing in a slipstream was studied by experiment, and the lift increased with the speed.
A dog is a domesticated carnivore of the family Canidae; it barks at strangers.
TXT
cat > rr.jsonl <<'TXT'
{"query": "what makes a wing lift", "pos": ["the wing in a slipstream gives more lift"], "neg": ["dogs bark at strangers", "the jury said nothing"], "pos_scores": [2.0], "neg_scores": [0.1, 0.0]}
{"query": "dog", "pos": ["a domesticated carnivore that barks"], "neg": ["a primary election", "a boundary layer"], "pos_scores": [1.5], "neg_scores": [0.0, 0.2]}
TXT
new="--tokenizer $tok --layers 2 --hidden 16 --heads 2 --kv-heads 1 --ff 32 --seq-len 16"
q="--quiet --seed 7"
timeout 60 "$mrank" train --stage lm --data lm.txt --out lm $new --steps 1 --batch 2 $q
rr="--init lm --data rr.jsonl --steps 3 --batch 1 --group 3 --max-len 48 $q"
cp="--init lm --data rr.jsonl --steps 2 --batch 1 --group 3 --max-len 48 --lora-rank 2 $q"

# width / cascade spacing against the model (deepest exit 2)
refuse "compensate --width-step 2" "--width-step 2: at most 1" \
    "$mrank" train --stage compensate $cp --out c1 --no-vertical --ratios 2 --width-step 2
refuse "rerank --width-step 2" "--width-step 2: at most 1" \
    "$mrank" train --stage rerank $rr --out r0 --width-step 2
refuse "--cascade-step huge" "--cascade-step 2147483647: at most 2" \
    "$mrank" train --stage rerank $rr --out r0 --cascade-step 2147483647
refuse "compensate without adapters" "trains no adapter" \
    "$mrank" train --stage compensate $cp --out c2 --no-vertical --ratios ""
refuse "--ratios twice" "--ratios: 2 twice" \
    "$mrank" train --stage compensate $cp --out c2 --ratios 2,2
refuse "lm --batch 300" "--batch 300: --stage lm takes at most 256" \
    "$mrank" train --stage lm --data lm.txt --out lmX $new --steps 1 --batch 300 $q
refuse "--query-max-len = --max-len" "--query-max-len 48 leaves no passage tokens in --max-len 48" \
    "$mrank" train --stage rerank $rr --out r0 --query-max-len 48

# resume: the state records the run's settings; another run's state is refused by field
timeout 60 "$mrank" train --stage rerank $rr --out r1 --stop-after 1
refuse "resume --seed" "field seed" "$mrank" train --stage rerank $rr --out r1 --resume --seed 8
refuse "resume --lr" "field lr" "$mrank" train --stage rerank $rr --out r1 --resume --lr 0.1
refuse "resume --max-len" "field max_len" \
    "$mrank" train --stage rerank $rr --out r1 --resume --max-len 64
cp rr.jsonl rr2.jsonl
sed -i 's/dogs bark/dogs howl/' rr2.jsonl
refuse "resume, other data" "field data_" \
    "$mrank" train --stage rerank $rr --out r1 --resume --data rr2.jsonl
timeout 60 "$mrank" train --stage lm --data lm.txt --out lmS $new --steps 3 --batch 2 $q --stop-after 1
refuse "rerank --resume in an lm folder" "train.state: field stage is lm in the state but rerank" \
    "$mrank" train --stage rerank $rr --out lmS --resume
[ ! -f lmS/model.safetensors ] || fail "rerank --resume in an lm folder wrote a model"
# the step: 0..--steps
python3 - r1/train.state <<'PY'
import struct, sys
b = open(sys.argv[1], "rb").read()
tl = struct.unpack("<I", b[8:12])[0]
at = 12 + tl
for step, name in ((-1, "neg"), (4, "big")):
    open(sys.argv[1] + "." + name, "wb").write(b[:at] + struct.pack("<q", step) + b[at + 8:])
# format 1 (older mrank): magic, 1, step, count, floats: no settings
open(sys.argv[1] + ".v1", "wb").write(b[:4] + struct.pack("<I", 1) + b[at:])
PY
mkdir -p rneg rbig
cp r1/train.state.neg rneg/train.state
cp r1/train.state.big rbig/train.state
refuse "state step -1" "rneg/train.state: field step out of range" \
    "$mrank" train --stage rerank $rr --out rneg --resume
refuse "state step 4 > --steps 3" "rbig/train.state: field step out of range" \
    "$mrank" train --stage rerank $rr --out rbig --resume
# an older-format state resumes (with a warning) to the bytes of an uninterrupted run
timeout 60 "$mrank" train --stage rerank $rr --out rA
mkdir -p rv1
cp r1/train.state.v1 rv1/train.state
msg=$(timeout 60 "$mrank" train --stage rerank $rr --out rv1 --resume 2>&1) || fail "v1 resume: $msg"
case $msg in *"does not record the run's settings"*) ;; *) fail "v1 resume: no warning: $msg" ;; esac
cmp rA/model.safetensors rv1/model.safetensors || fail "v1 resume differs"
timeout 60 "$mrank" train --stage rerank $rr --out r1 --resume
cmp rA/model.safetensors r1/model.safetensors || fail "resume differs"
# --resume with nothing to resume says so, and trains from step 0
msg=$(timeout 60 "$mrank" train --stage rerank $rr --out rN --resume 2>&1) || fail "fresh --resume: $msg"
case $msg in *"no state rN/train.state to resume, starting at step 0"*) ;;
    *) fail "fresh --resume: $msg" ;; esac
cmp rA/model.safetensors rN/model.safetensors || fail "fresh --resume differs"

# data faults at load, with path:line
{ head -1 rr.jsonl; echo '{"query": "dog", "pos": ["a carnivore"], "neg": ["an election"]}'; } > mix.jsonl
refuse "scores on some lines" "mix.jsonl:2: has no pos_scores/neg_scores but line 1 has" \
    "$mrank" train --stage rerank $rr --out r0 --data mix.jsonl
{ head -1 rr.jsonl; echo '{"query": "dog", "pos": ["a"], "neg": ["b"], "pos_scores": [1e999], "neg_scores": [0]}'; } > inf.jsonl
refuse "inf score" "inf.jsonl:2: pos_scores[0]" "$mrank" train --stage rerank $rr --out r0 --data inf.jsonl
{ head -1 rr.jsonl; echo '{"query": "dog", "pos": ["a"], "neg": ["b"], "pos_scores": [1], "neg_scores": [3e38]}'; echo '{"query": "x", "pos": ["a"], "neg": ["b"], "pos_scores": [1], "neg_scores": [4e38]}'; } > big.jsonl
refuse "score over FLT_MAX" "big.jsonl:3: neg_scores[0]" "$mrank" train --stage rerank $rr --out r0 --data big.jsonl
long=$(printf 'is passage B about the query A or not, %.0s' $(seq 40))
{ head -1 rr.jsonl; printf '{"query": "dog", "pos": ["a"], "neg": ["b"], "pos_scores": [1], "neg_scores": [0], "prompt": "%s"}\n' "$long"; } > long.jsonl
refuse "over-long prompt" "long.jsonl:2: query + pos[0] + prompt are" \
    "$mrank" train --stage rerank $rr --out r0 --data long.jsonl
# a tokenizer with more pieces than the model embeds (qwen3's ids beside a 32000-row model)
refuse "ids outside the vocabulary" "rr.jsonl:1: prompt: token 1 has id 53544, outside the model's vocabulary" \
    "$mrank" train --stage rerank $rr --out r0 --tokenizer "$root/third_party/tokenizers/qwen3/tokenizer.json"
refuse "lm: ids outside the vocabulary" "lm.txt:2: text: token 7 has id 96633" \
    "$mrank" train --stage lm --init lm --data lm.txt --out lmV --steps 1 $q \
    --tokenizer "$root/third_party/tokenizers/qwen3/tokenizer.json"

# paths past the old 1100/1200-byte buffers: a stopped and resumed run under a long folder
seg=$(printf 'd%.0s' $(seq 200))
deep=$seg/$seg/$seg/$seg/$seg/$seg
timeout 60 "$mrank" train --stage rerank $rr --out "$deep" --stop-after 1
[ -f "$deep/train.state" ] || fail "long path: no state"
timeout 60 "$mrank" train --stage rerank $rr --out "$deep" --resume
cmp rA/model.safetensors "$deep/model.safetensors" || fail "long path: resumed run differs"
echo "train_checks: ok"
