#!/usr/bin/env bash
# The main job of the README: installs dependencies, builds mrank, starts a local cascade
# cluster (`mrank up`: a coordinator and two worker pools on loopback, deploy/local.json, with the
# bundled model models/mrank-tiny, trained by scripts/train-default.sh), sends one
# rerank over gRPC, prints the ranking and stops the cluster.
# KEEP_RUNNING=1 leaves the cluster up until Ctrl-C; BACKEND=cuda scores on the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"

log=$(mktemp)
./build/mrank up --config deploy/local.json --backend "${BACKEND:-cpu}" > "$log" 2>&1 &
up=$!
trap 'kill -TERM $up 2>/dev/null || true; wait $up 2>/dev/null || true; rm -f "$log" "${docs:-}"' EXIT
for _ in $(seq 1 240); do
  grep -q '^coordinator: ' "$log" && break
  kill -0 $up 2>/dev/null || { cat "$log"; echo "mrank up exited" >&2; exit 1; }
  sleep 0.5
done
cat "$log"
addr=$(sed -n 's/^coordinator: //p' "$log" | head -1)
[ -n "$addr" ] || { echo "cluster did not come up" >&2; exit 1; }
docs=$(mktemp)
# in the order a first-stage retriever (BM25) ranks them for the query, as callers send them
printf '%s\n' "Paris is the capital and most populous city of France." \
  "France is a country in Western Europe; its capital is Paris." \
  "Berlin is the capital of Germany." \
  "The population of China is over 1.4 billion people." > "$docs"
./build/mrank rerank --addr "$addr" --query "what is the capital of France?" --docs "$docs"
if [ "${KEEP_RUNNING:-0}" = 1 ]; then
  echo "cluster running at $addr; Ctrl-C to stop"
  wait $up
fi
