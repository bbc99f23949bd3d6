#!/usr/bin/env bash
# gemm_drift.sh: how much a low-precision GEMM path moves the bundled models' rankings: for each
# bundled model and IR collection, `mrank eval` (deepest exit, BM25 top-100 candidates) once with
# MR_GEMM=f32 and once with each path in PATHS, then the mean top-10 overlap per query (|top-10
# of f32 ∩ top-10 of the path| / 10) and the nDCG@10 of both runs as eval prints it.
# Usage: bench/gemm_drift.sh [MRANK]   Environment: PATHS ("bf16"), MODELS ("models/mrank-tiny
# models/mrank-tiny-d8"), COLLECTIONS (the four in ../shared/data/ir), MAX_QUERIES (20), OUT
# (build-bench/gemm-drift).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
MRANK=${1:-build-bench/mrank}
PATHS=${PATHS:-bf16}
MODELS=${MODELS:-models/mrank-tiny models/mrank-tiny-d8}
IR=../shared/data/ir
COLLECTIONS=${COLLECTIONS:-$IR/cranfield $IR/cacm $IR/medline $IR/npl}
MAX_QUERIES=${MAX_QUERIES:-20}
OUT=${OUT:-build-bench/gemm-drift}
mkdir -p "$OUT"
overlap() { # mean top-10 overlap of two TREC runs
  /usr/bin/python3 - "$1" "$2" <<'EOF'
import collections, sys
def top(path):
    runs = collections.defaultdict(list)
    for line in open(path):
        q, _, d, rank, score, _ = line.split()
        runs[q].append((int(rank), d))
    return {q: {d for _, d in sorted(v)[:10]} for q, v in runs.items()}
a, b = top(sys.argv[1]), top(sys.argv[2])
print("%.4f" % (sum(len(a[q] & b.get(q, set())) / 10 for q in a) / len(a)))
EOF
}
printf "%-22s %-10s %-6s %8s %8s %8s\n" model collection path ndcg_f32 ndcg top10ov
for m in $MODELS; do
  for c in $COLLECTIONS; do
    tag=$(basename "$m")-$(basename "$c")
    ref=$OUT/$tag-f32.run
    nf=$(MR_GEMM=f32 "$MRANK" eval --model "$m" --collection "$c" --max-queries "$MAX_QUERIES" \
         --out "$ref" 2>&1 | awk '/^model exit/ {print $4}')
    for p in $PATHS; do
      run=$OUT/$tag-$p.run
      np=$(MR_GEMM=$p "$MRANK" eval --model "$m" --collection "$c" --max-queries "$MAX_QUERIES" \
           --out "$run" 2>&1 | awk '/^model exit/ {print $4}')
      printf "%-22s %-10s %-6s %8s %8s %8s\n" "$(basename "$m")" "$(basename "$c")" "$p" \
        "$nf" "$np" "$(overlap "$ref" "$run")"
    done
  done
done
