#!/usr/bin/env bash
# workers.sh: the worker command lines behind cluster.json (this folder), one `mrank worker` per
# pool address, run from the repository root; stops both on SIGTERM/SIGINT. Every worker maps
# the same checkpoint (the page cache holds one copy) and loads the vertical compensation
# adapter the stages name ("vert", kept unmerged and applied per request).
# Usage: workers.sh [MRANK]   (default: mrank on PATH)
# Environment: MODEL (default models/matroyshka-reranker-passage), CHEAP_PORT (7221),
# FULL_PORT (7222), CHEAP_METRICS (9221), FULL_METRICS (9222), THREADS (compute threads per
# worker; default all CPUs), WARM_UP_ROWS (rows of each worker's start-up speed measurement,
# default 1: at full depth 8 rows are ~50 TFLOP, minutes on a small CPU; 0 skips it and leaves
# the measuring to the coordinator's warm-up; use 8 on a GPU), PROMPT (default: the engine's, the release's default prompt).
set -euo pipefail
M=${1:-mrank}
MODEL=${MODEL:-models/matroyshka-reranker-passage}
args=(--model "$MODEL" --max-len 512 --adapter "vert=$MODEL/compensate/layer/full")
args+=(--warm-up-rows "${WARM_UP_ROWS:-1}")
[ -n "${THREADS:-}" ] && args+=(--threads "$THREADS")
[ -n "${PROMPT:-}" ] && args+=(--prompt "$PROMPT")
trap 'kill $(jobs -p) 2>/dev/null; wait' TERM INT
"$M" worker "${args[@]}" --listen "127.0.0.1:${CHEAP_PORT:-7221}" \
  --metrics-port "${CHEAP_METRICS:-9221}" &
"$M" worker "${args[@]}" --listen "127.0.0.1:${FULL_PORT:-7222}" \
  --metrics-port "${FULL_METRICS:-9222}" &
wait
