#!/usr/bin/env bash
# train-default.sh [OUT]: reproduces the bundled model models/mrank-tiny (docs/model-card.md)
# with `mrank train` on public-domain text only (scripts/make-train-data.sh), one thread.
# Stages, each in its own folder under OUT (default out/default):
#   lm        causal-LM pre-training from scratch, Mistral layout, lowercasing Mistral tokenizer
#   rr1..rr2  re-ranker (cascaded self-distillation: random width, all exits, listwise CE + BM25
#             teacher + cascade term), a curriculum: keyword queries over 12-word passages, then
#             keyword and natural queries over 30-word passages
#   comp      factorized compensation: vertical (r = 1) and width-2/4/8 LoRA adapters
# then copies the result to models/mrank-tiny (MODEL=... to write elsewhere) with lexicon.txt:
# the general-English statistics (`mrank lexicon build --stem english` over lm.txt, the Brown paragraphs and
# WordNet glosses) that the default profile's lexical stage uses (docs/cluster.md).
# NAIVE=1 also trains the naive-truncation baseline (--full-only, same budget) for the ablation.
# LAYERS (default 4), CASCADE_STEP (cascade anchor spacing, default 0: max(1, layers / 4)),
# CASCADE_WEIGHT (stage-2 cascade term weight, default 1, the spec's), RR2_LR (stage-2 learning
# rate, default 5e-4) and COMP_LR (compensation, default 2e-4) train other shapes with the same
# recipe; set MODEL too. models/mrank-tiny-d8 (docs/model-card.md) is
# LAYERS=8 CASCADE_STEP=8 CASCADE_WEIGHT=10 RR2_LR=2e-4 COMP_LR=2e-5 MODEL=models/mrank-tiny-d8.
# Every stage checkpoints every 500 steps and is marked done by OUT/STAGE/done when complete:
# the same command, run again after an interruption, resumes where it stopped.
# Wall time on one core of the CI machine: about 20 (lm) + 27 + 8 + 4 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
M=${M:-build-trn/mrank}
O=${1:-out/default}
D=third_party/train-data
MODEL=${MODEL:-models/mrank-tiny}
[ -x "$M" ] || { cmake -S . -B build-trn -DCMAKE_BUILD_TYPE=Release -DMR_CUDA=OFF >/dev/null &&
                 cmake --build build-trn -j"$(nproc)" --target mrank; }
[ -f $D/mid/rerank-train.jsonl ] || bash scripts/make-train-data.sh
LAYERS=${LAYERS:-4}
CASCADE_STEP=${CASCADE_STEP:-0}
RR2_LR=${RR2_LR:-5e-4}
COMP_LR=${COMP_LR:-2e-4}
CASCADE_WEIGHT=${CASCADE_WEIGHT:-1}
mkdir -p "$O"
stage() {  # stage NAME mrank-train-flags...: runs (or resumes) unless OUT/NAME/done exists
    local name=$1
    shift
    [ -f "$O/$name/done" ] && return 0
    $M train "$@" --out "$O/$name" --save-every 500 --resume
    touch "$O/$name/done"
}

stage lm --stage lm --data $D/lm.txt --tokenizer $D/tokenizer.json --layers "$LAYERS" \
    --hidden 128 --heads 4 --kv-heads 2 --ff 384 --steps 6000 --batch 8 --seq-len 128 --lr 2e-3

rr() {  # rr NAME INIT DATA STEPS BATCH MAXLEN LR [extra flags]
    local name=$1 init=$2 data=$3 steps=$4 batch=$5 maxlen=$6 lr=$7
    shift 7
    stage $name --stage rerank --init $init --data $data/rerank-train.jsonl --steps $steps \
        --batch $batch --group 16 --max-len $maxlen --lr $lr --cascade-step "$CASCADE_STEP" "$@"
}
rr rr1 $O/lm $D/short 6000 4 40 1e-3
rr rr2 $O/rr1 $D/mid 2000 2 80 $RR2_LR --keep-heads --cascade-weight "$CASCADE_WEIGHT"
if [ "${NAIVE:-0}" = 1 ]; then
    rr naive1 $O/lm $D/short 6000 4 40 1e-3 --full-only
    rr naive2 $O/naive1 $D/mid 2000 2 80 $RR2_LR --keep-heads --full-only
fi
stage comp --stage compensate --init $O/rr2 --data $D/mid/rerank-train.jsonl --steps 300 \
    --batch 2 --group 16 --max-len 80 --lr $COMP_LR --lora-rank 8 --lora-alpha 16 --lora-dropout 0.1

[ -s $O/lexicon.txt ] || {
    python3 -c 'import json, sys
for i, line in enumerate(open(sys.argv[1], encoding="utf-8")):
    print(json.dumps({"_id": str(i), "text": line.strip()}))' $D/lm.txt > $O/general.jsonl
    $M lexicon build --corpus $O/general.jsonl --stem english --out $O/lexicon.txt
}

mkdir -p "$MODEL/adapters"
cp $O/rr2/config.json $O/rr2/model.safetensors $O/rr2/tokenizer.json $O/lexicon.txt "$MODEL/"
for a in vertical width-2 width-4 width-8; do
    mkdir -p "$MODEL/adapters/$a"
    cp $O/comp/$a/adapter_config.json $O/comp/$a/adapter_model.safetensors "$MODEL/adapters/$a/"
done
echo "wrote $MODEL"
