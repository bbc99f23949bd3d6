#!/usr/bin/env bash
# llama_baseline.sh: mrank against llama.cpp on the same seeded checkpoint and the same prefill
# (N rows of L tokens, all prefill, THREADS threads), in interleaved rounds (llama.cpp dtypes,
# then mrank's GEMM paths, ROUNDS times), reporting medians over rounds and the ratios.
#   builds llama.cpp from third_party/llama.cpp (CPU only) into BUILD_LLAMA (git-ignored),
#   writes the seeded checkpoint (bf16, `mrank init-checkpoint`), converts it to GGUF F32 and BF16
#   (bench/hf_to_gguf.py: llama.cpp's convert_hf_to_gguf.py needs transformers, not in Debian)
#   and Q8_0 (llama-quantize), then times llama-batched-bench -npp L -ntg 0 -npl NPL and
#   bench_prefill (mrank, one mr_model_score call over the N rows at the deepest exit).
# Called by bench/run_cpu.sh (LLAMA=0 skips it) or alone after a build of BUILD.
# llama.cpp's runs are short (one sequence: well under a second), so each round runs its
# -npp list LLAMA_REPS times (one line each) and takes the median line, to sample the machine's
# load over a span closer to mrank's run; the summary gives medians over rounds and the median of
# the per-round ratios (both from the same round, the figure least hurt by other load).
# Environment (all optional): THREADS (2), ROUNDS (3), LLAMA_REPS (10), ROWS (64), LEN (304),
# NPL (llama.cpp's parallel sequences, comma list, default "1,ROWS"), DTYPES (llama.cpp: "bf16 f32 q8_0"), GEMMS
# (mrank: "bf16 f32"), LAYERS HIDDEN HEADS KV_HEADS INTERMEDIATE (8 1024 16 8 2816), BUILD
# (build-bench), BUILD_LLAMA (build-llama), OUT ($BUILD/llama-cmp), PYTHON (/usr/bin/python3).
# OPENBLAS_CORETYPE is left as the environment has it (printed); it matters only to mrank's
# openblas-f32 path.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
LLAMA_REPS=${LLAMA_REPS:-10}
ROWS=${ROWS:-64}
LEN=${LEN:-304}
NPL=${NPL:-1,$ROWS}
DTYPES=${DTYPES:-bf16 f32 q8_0}
GEMMS=${GEMMS:-bf16 f32}
LAYERS=${LAYERS:-8}
HIDDEN=${HIDDEN:-1024}
HEADS=${HEADS:-16}
KV_HEADS=${KV_HEADS:-8}
INTERMEDIATE=${INTERMEDIATE:-2816}
BUILD=${BUILD:-build-bench}
BUILD_LLAMA=${BUILD_LLAMA:-build-llama}
OUT=${OUT:-$BUILD/llama-cmp}
PYTHON=${PYTHON:-/usr/bin/python3}
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS
mkdir -p "$OUT"

if [ ! -x "$BUILD_LLAMA/bin/llama-batched-bench" ] || [ ! -x "$BUILD_LLAMA/bin/llama-quantize" ]; then
  echo "== build llama.cpp (CPU) into $BUILD_LLAMA"
  cmake -S third_party/llama.cpp -B "$BUILD_LLAMA" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=OFF \
    -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
  cmake --build "$BUILD_LLAMA" -j2 --target llama-batched-bench llama-quantize >/dev/null
fi
[ -x "$BUILD/bench/bench_prefill" ] || cmake --build "$BUILD" -j2 --target mrank bench_prefill >/dev/null

CKPT=$OUT/ckpt-l${LAYERS}-h${HIDDEN}-bf16
if [ ! -f "$CKPT/model.safetensors" ]; then
  "$BUILD/mrank" init-checkpoint --arch mistral --layers "$LAYERS" --hidden "$HIDDEN" \
    --heads "$HEADS" --kv-heads "$KV_HEADS" --intermediate "$INTERMEDIATE" \
    --vocab-from third_party/tokenizers/llama2/tokenizer.json --start-layer 1 --dtype bf16 \
    --seed 1 --out "$CKPT"
fi
for dt in f32 bf16; do
  [ -f "$OUT/model-$dt.gguf" ] || PYTHONPATH=third_party/llama.cpp/gguf-py \
    "$PYTHON" bench/hf_to_gguf.py "$CKPT" "$OUT/model-$dt.gguf" "$dt"
done
[ -f "$OUT/model-q8_0.gguf" ] || "$BUILD_LLAMA/bin/llama-quantize" "$OUT/model-f32.gguf" \
  "$OUT/model-q8_0.gguf" Q8_0 >/dev/null 2>&1

echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg);" \
     "threads $THREADS; OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
echo "== $ROUNDS interleaved rounds: llama.cpp ${DTYPES// /,} (npl $NPL), then mrank ${GEMMS// /,}"
res=$OUT/results.tsv
: > "$res"
ctx=$(( ROWS * (LEN + 16) ))
npp=$LEN
for _ in $(seq 2 "$LLAMA_REPS"); do npp=$npp,$LEN; done
for round in $(seq 1 "$ROUNDS"); do
  for dt in $DTYPES; do
    "$BUILD_LLAMA/bin/llama-batched-bench" -m "$OUT/model-$dt.gguf" -c "$ctx" -b 2048 -ub 512 \
      -npp "$npp" -ntg 0 -npl "$NPL" -t "$THREADS" -no-kvu 2>/dev/null |
      awk -F'|' '$2 ~ /^ *[0-9]+ *$/ { gsub(/ /, "", $4); gsub(/ /, "", $7); print $4, $7 }' |
      sort -k1,1n -k2,2g | awk -v r="$round" -v dt="$dt" '
        { v[$1] = v[$1] " " $2; n[$1]++ }
        END { for (k in v) { split(substr(v[k], 2), a, " "); m = a[int((n[k] + 1) / 2)];
              print r "\tllama.cpp-" dt "-npl" k "\t" m } }' |
      tee -a "$res"
  done
  for g in $GEMMS; do
    MR_GEMM=$g "$BUILD/bench/bench_prefill" "$CKPT" --rows "$ROWS" --len "$LEN" --reps 1 |
      "$PYTHON" -c 'import json,sys; d=json.load(sys.stdin); print("%s\tmrank-%s\t%.1f" % (sys.argv[1], d["gemm"], d["tokens_per_s"]))' "$round" |
      tee -a "$res"
  done
done
"$PYTHON" - "$res" <<'EOF' | tee "$OUT/summary.txt"
import collections, statistics, sys
by = collections.defaultdict(list)
for line in open(sys.argv[1]):
    r, name, tps = line.split("\t")
    by[name].append(float(tps))
med = {k: statistics.median(v) for k, v in by.items()}
llama = {k: v for k, v in med.items() if k.startswith("llama.cpp")}
mrank = {k: v for k, v in med.items() if k.startswith("mrank")}
print("median tokens/s over %d rounds" % max(len(v) for v in by.values()))
for k in sorted(med):
    print("  %-28s %9.1f  (rounds: %s)" % (k, med[k], ", ".join("%.0f" % x for x in by[k])))
rounds = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    r, name, tps = line.split("\t")
    rounds[r][name] = float(tps)
def ratio(a, b):  # median over rounds of a/b measured in the same round
    v = [x[a] / x[b] for x in rounds.values() if a in x and b in x]
    return statistics.median(v), v
if llama and mrank:
    bl, bm = max(llama, key=llama.get), max(mrank, key=mrank.get)
    m, v = ratio(bm, bl)
    print("best mrank (%s) / best llama.cpp (%s): %.2fx by medians; per-round %s, median %.2fx"
          " (target >= 1.2x)" % (bm, bl, med[bm] / med[bl], ", ".join("%.2f" % x for x in v), m))
    f32l = [k for k in llama if "-f32-" in k]
    if "mrank-onednn-f32" in med and f32l:
        k = max(f32l, key=llama.get)
        m, v = ratio("mrank-onednn-f32", k)
        print("mrank onednn-f32 / %s: %.2fx by medians; per-round %s, median %.2fx (target >= 1.2x)"
              % (k, med["mrank-onednn-f32"] / med[k], ", ".join("%.2f" % x for x in v), m))
EOF
