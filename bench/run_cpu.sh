#!/usr/bin/env bash
# run_cpu.sh: the mrank CPU benchmark in one command.
#   builds mrank and bench_engine (Release), writes a seeded benchmark checkpoint, runs
#   bench_engine (C engine) and bench/torch_eager.py (PyTorch eager baseline) on the same 100
#   rows at the same thread count, and prints the final table:
#   C pairs/s / PyTorch pairs/s per configuration (target >= 1.5x) and the engine's linear-layer
#   efficiency vs the OpenBLAS sgemm peak measured in the same run (target >= 70%).
#   Then (LLAMA=0 skips it) bench/llama_baseline.sh: llama.cpp built from third_party/llama.cpp
#   against mrank's GEMM paths on a seeded Mistral-shaped bf16 checkpoint, 64 x 304-token
#   prefill at THREADS threads, interleaved rounds (its header lists its settings; figures in
#   docs/perf.md).
#
# Environment (all optional): THREADS (default 2), REPS (timed runs per config, default 3),
# WARMUP (default 1), BATCH (torch batch size, 0 = all rows, default 0), LAYERS HIDDEN HEADS
# KV_HEADS INTERMEDIATE (checkpoint shape, default 4 512 8 4 1536), BUILD (build folder,
# default build-bench), OUT (results folder, default $BUILD/bench-cpu), PYTHON (default
# /usr/bin/python3, the Debian python with torch 1.13 CPU and numpy).
# OPENBLAS_CORETYPE is left as the environment has it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
THREADS=${THREADS:-2}
REPS=${REPS:-3}
WARMUP=${WARMUP:-1}
BATCH=${BATCH:-0}
LAYERS=${LAYERS:-4}
HIDDEN=${HIDDEN:-512}
HEADS=${HEADS:-8}
KV_HEADS=${KV_HEADS:-4}
INTERMEDIATE=${INTERMEDIATE:-1536}
BUILD=${BUILD:-build-bench}
OUT=${OUT:-$BUILD/bench-cpu}
PYTHON=${PYTHON:-/usr/bin/python3}
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS

echo "== build (Release) into $BUILD"
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
mkdir -p "$OUT"
cmake --build "$BUILD" -j2 --target mrank bench_engine bench_prefill >/dev/null
MRANK=$BUILD/mrank
BENCH=$BUILD/bench/bench_engine

CKPT=$OUT/ckpt-l${LAYERS}-h${HIDDEN}
TOK=third_party/tokenizers/llama2/tokenizer.json
echo "== checkpoint $CKPT (mistral, $LAYERS layers, hidden $HIDDEN, heads $HEADS/$KV_HEADS kv," \
     "intermediate $INTERMEDIATE, f32, seed 1)"
init() {
  "$MRANK" init-checkpoint --arch mistral --layers "$LAYERS" --hidden "$HIDDEN" \
    --heads "$HEADS" --kv-heads "$KV_HEADS" --intermediate "$INTERMEDIATE" --vocab-from "$1" \
    --start-layer 1 --dtype f32 --seed 1 --out "$CKPT"
}
[ -f "$CKPT/model.safetensors" ] || init "$TOK"

echo "== machine: $(nproc) cores, $(lscpu | grep 'Model name' | sed 's/.*: *//'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== C engine: OMP_NUM_THREADS=$OMP_NUM_THREADS OPENBLAS_NUM_THREADS=$OPENBLAS_NUM_THREADS" \
     "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
"$BENCH" --model "$CKPT" --reps "$REPS" --warmup "$WARMUP" --rows-out "$OUT/rows.json" \
  | tee "$OUT/c.txt"
echo
echo "== PyTorch eager ($PYTHON), $THREADS threads, load $(cut -d' ' -f1-3 /proc/loadavg)"
set +e
"$PYTHON" bench/torch_eager.py --rows "$OUT/rows.json" --threads "$THREADS" --reps "$REPS" \
  --warmup "$WARMUP" --batch-size "$BATCH" --out "$OUT/torch.json" | tee "$OUT/torch.txt"
check=${PIPESTATUS[0]}
set -e
echo
"$PYTHON" - "$OUT/rows.json" "$OUT/torch.json" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
c = json.load(open(sys.argv[1]))
t = {r["name"]: r for r in json.load(open(sys.argv[2]))["configs"]}
print(f"final table ({c['threads']} threads; sgemm peak {c['sgemm_peak_gflops']:.1f} GFLOP/s on the"
      f" model's layer shape mix, best single shape {c['sgemm_best_shape_gflops']:.1f})")
print(f"{'config':<18} {'C pairs/s':>9} {'torch':>8} {'C/torch':>8} {'target':>6} {'C/torch':>8}"
      f" {'C GFLOP/s':>9} {'lin.eff':>8} {'target':>6} {'eff':>7} {'rel diff':>8}")
print(f"{'':<18} {'':>9} {'pairs/s':>8} {'wall':>8} {'1.5x':>6} {'cpu-s':>8}"
      f" {'wall':>9} {'wall':>8} {'70%':>6} {'cpu-s':>7} {'max':>8}")
for cfg in c["configs"]:
    r = t.get(cfg["name"])
    if not r:
        continue
    sp = cfg["c_pairs_per_s"] / r["torch_pairs_per_s"]
    sp_cpu = r["cpu_s"] / cfg["c_cpu_s"]
    eff = 100 * cfg["c_efficiency"]
    print(f"{cfg['name']:<18} {cfg['c_pairs_per_s']:>9.2f} {r['torch_pairs_per_s']:>8.2f}"
          f" {sp:>7.2f}x {'ok' if sp >= 1.5 else 'MISS':>6} {sp_cpu:>7.2f}x {cfg['c_gflops']:>9.1f}"
          f" {eff:>7.1f}% {'ok' if eff >= 70 else 'MISS':>6} {100 * cfg['c_efficiency_cpu']:>6.1f}%"
          f" {r['max_rel_diff']:>8.1e}")
print("C/torch cpu-s: torch process CPU seconds / C process CPU seconds for the same work;"
      " eff cpu-s: linear-layer efficiency with both rates per CPU-second (see bench_engine's"
      " summary). Both are less sensitive than the wall-clock figures to other load on the cores.")
EOF
echo "results in $OUT (c.txt, torch.txt, summary.txt, rows.json, torch.json)"
if [ "${LLAMA:-1}" != 0 ]; then
  echo
  echo "== llama.cpp baseline (bench/llama_baseline.sh)"
  BUILD=$BUILD OUT=$BUILD/llama-cmp bench/llama_baseline.sh
fi
exit "$check"
