#!/usr/bin/env bash
# ablation.sh: the Matryoshka ablation at toy scale, one CPU core (docs/results.md).
# From an existing LM checkpoint it trains, with equal budgets (same steps, batch, group, lr,
# data order):
#   full     re-ranker at full depth and width only (loss at the deepest exit, no random width,
#            no cascade): its sub-models are the naive-truncation baseline;
#   cascade  random width per micro-batch + cascaded self-distillation (all exits);
#   comp     cascade + compensation adapters (vertical, width-2/4/8), run-time, unmerged.
# Then `mrank eval --grid` on cranfield (and medline, cacm, npl with fewer queries), every
# (exit, ratio) point: FLOPs/pair, nDCG@10, MRR@10, top-10 overlap and Kendall tau against the
# system's own full model, held-out listwise CE on rows of rerank.jsonl kept out of training.
# Writes out/ablation/grid-*.tsv, out/ablation/ablation.md and docs/*.png (gnuplot).
# Steps already done (their output exists) are skipped; FORCE=1 redoes everything.
# Env: LM (default out/run2/lm), STEPS (300), Q (cranfield queries, 50), QO (others, 20),
#      HELD (held-out rows, 100), MAXLEN (128), COLLS (cranfield medline cacm npl), M (mrank),
#      O (output folder, out/ablation), TAG (suffix of the plot names, none).
# Example: LM=out/run1/lm O=out/ablation-run1 TAG=-run1 bash scripts/ablation.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
M=${M:-build-trn/mrank}
LM=${LM:-out/run2/lm}
STEPS=${STEPS:-300}
Q=${Q:-50}
QO=${QO:-20}
HELD=${HELD:-100}
MAXLEN=${MAXLEN:-128}
COLLS=${COLLS:-cranfield medline cacm npl}
IR=${IR:-../shared/data/ir}
D=${D:-third_party/train-data}
O=${O:-out/ablation}
TAG=${TAG:-}
mkdir -p "$O" docs
[ -x "$M" ] || { echo "ablation.sh: $M not built (cmake --build build-trn)" >&2; exit 1; }
[ -d "$LM" ] || { echo "ablation.sh: no LM checkpoint $LM" >&2; exit 1; }
[ -f $D/rerank.jsonl ] || bash scripts/make-train-data.sh
done_() { [ -z "${FORCE:-}" ] && [ -e "$1" ]; }
t0=$(date +%s)
log() { echo "[ablation $(( $(date +%s) - t0 ))s] $*" >&2; }

# held-out split of the training data (seeded; never the evaluation collections)
if ! done_ $D/rerank-heldout.jsonl; then
  python3 - <<'PY'
import random
L = open('third_party/train-data/rerank.jsonl').read().splitlines()
random.Random(7).shuffle(L)
open('third_party/train-data/rerank-heldout.jsonl', 'w').write('\n'.join(L[:200]) + '\n')
open('third_party/train-data/rerank-train.jsonl', 'w').write('\n'.join(L[200:]) + '\n')
PY
fi

common=(--init "$LM" --data $D/rerank-train.jsonl --steps "$STEPS" --batch 2 --group 8
        --max-len "$MAXLEN" --lr 5e-4 --seed 1 --quiet)
done_ $O/full/model.safetensors || { log "train full"; $M train --stage rerank --full-only \
  "${common[@]}" --out $O/full 2> $O/train-full.log; }
done_ $O/cascade/model.safetensors || { log "train cascade"; $M train --stage rerank \
  "${common[@]}" --out $O/cascade 2> $O/train-cascade.log; }
done_ $O/comp/width-8 || { log "train comp"; $M train --stage compensate --init $O/cascade \
  --data $D/rerank-train.jsonl --out $O/comp --steps 60 --batch 2 --group 8 --max-len "$MAXLEN" \
  --lr 2e-4 --ratios 2,4,8 --lora-rank 8 --lora-alpha 16 --seed 1 --quiet 2> $O/train-comp.log; }

for c in $COLLS; do
  [ -d "$IR/$c" ] || continue
  nq=$Q; [ "$c" = cranfield ] || nq=$QO
  held=(); [ "$c" = cranfield ] && held=(--heldout $D/rerank-heldout.jsonl --heldout-max "$HELD")
  for s in full cascade comp; do
    tsv=$O/grid-$s-$c.tsv
    done_ "$tsv" && continue
    log "grid $s $c ($nq queries)"
    model=$O/$s; extra=()
    [ $s = comp ] && model=$O/cascade extra=(--comp $O/comp)
    $M eval --grid --model "$model" "${extra[@]}" --collection "$IR/$c" --max-queries "$nq" \
      --max-len "$MAXLEN" "${held[@]}" --label "$s" --tsv "$tsv" --out $O/full-$s-$c.run \
      --quiet > $O/grid-$s-$c.txt
  done
done
log "tables and plots"
python3 trainer/ablation_table.py $O > $O/ablation.md
if command -v gnuplot >/dev/null; then
  for c in $COLLS; do
    [ -f "$O/plot-full-$c.dat" ] && gnuplot -e "dir='$O'; coll='$c'; tag='$TAG'" trainer/ablation.gp
  done
else
  echo "ablation.sh: gnuplot missing (apt-get install gnuplot-nox): no plots" >&2
fi
log "done: $O/ablation.md, docs/ablation-*$TAG.png"
