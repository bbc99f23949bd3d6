#!/usr/bin/env bash
# shape7b.sh: query-prefix sharing and fused stages on a seeded Mistral-7B shape (32 layers,
# hidden 4096, 32 heads / 8 KV heads, FFN 14336, llama2 vocabulary, bf16, exit heads from layer
# 1), the engine alone (bench_prefill), as docs/perf.md measures them on the 8-layer models:
#   sharing: --ab, shared and unshared passes alternated in one process, ROWS_S rows of LEN_S
#            tokens with a QUERY-token query prefix: token-layers both ways (the engine's own
#            count), median times and the largest score difference;
#   fused:   --fused DA:KEEP, a split two-stage cascade (exit DA over ROWS_F rows of LEN_F
#            tokens, then the deepest exit over the best KEEP) against one pass pruning at DA.
# Writes the checkpoint (about 14.5 GB; kept in OUT for a rerun) and OUT/shape7b.jsonl. The
# coordinator's requests/s at saturation is not measured at this shape: on 2 cores one request
# takes tens of seconds, so a saturation run of a few requests per arm says nothing.
# Environment (all optional): BUILD (build), OUT (build/shape7b), MR_GEMM (auto: bf16 on this
# bf16 checkpoint where the CPU has AVX512-BF16), THREADS (2), REPS (3), ROWS_S (8), LEN_S (128),
# QUERY (48), ROWS_F (16), LEN_F (64), DA (16), KEEP (4). OPENBLAS_CORETYPE as the environment
# has it (printed; the oneDNN paths do not use OpenBLAS).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BUILD=${BUILD:-build}
OUT=${OUT:-$BUILD/shape7b}
THREADS=${THREADS:-2}
REPS=${REPS:-3}
ROWS_S=${ROWS_S:-8}
LEN_S=${LEN_S:-128}
QUERY=${QUERY:-48}
ROWS_F=${ROWS_F:-16}
LEN_F=${LEN_F:-64}
DA=${DA:-16}
KEEP=${KEEP:-4}
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS
mkdir -p "$OUT"
cmake --build "$BUILD" -j2 --target mrank bench_prefill >/dev/null
CKPT=$OUT/mistral7b-bf16
if [ ! -f "$CKPT/SEEDED" ]; then
  rm -rf "$CKPT"
  "$BUILD/mrank" init-checkpoint --arch mistral --layers 32 --hidden 4096 --heads 32 \
    --kv-heads 8 --intermediate 14336 --vocab-from third_party/tokenizers/llama2/tokenizer.json \
    --start-layer 1 --dtype bf16 --seed 1 --out "$CKPT"
fi
echo "== $(date -u +%FT%TZ) machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg);" \
     "threads $THREADS; MR_GEMM=${MR_GEMM:-unset}; OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
res=$OUT/shape7b.jsonl
: > "$res"
"$BUILD/bench/bench_prefill" "$CKPT" --rows "$ROWS_S" --len "$LEN_S" --query "$QUERY" \
  --reps "$REPS" --ab | tee -a "$res"
"$BUILD/bench/bench_prefill" "$CKPT" --rows "$ROWS_F" --len "$LEN_F" --reps "$REPS" \
  --fused "$DA:$KEEP" | tee -a "$res"
echo "== $(date -u +%FT%TZ) done: $res"
