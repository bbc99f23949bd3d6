#!/usr/bin/env bash
# workers.sh: the worker command lines behind cluster.json (this folder), one `mrank worker` per
# pool address, run from the repository root; stops both on SIGTERM/SIGINT. Both map the same
# checkpoint (the page cache holds one copy). The release has no adapters: its compression
# ability is in the weights. The prompt is the model card's first one, which is also the
# engine's default; the card lists three more for other tasks (docs/checkpoints.md).
# Usage: workers.sh [MRANK]   (default: mrank on PATH)
# Environment: MODEL (default models/bge-reranker-v2.5-gemma2-lightweight), LIGHT_PORT (7211),
# FULL_PORT (7212), LIGHT_METRICS (9211), FULL_METRICS (9212), THREADS (compute threads per
# worker; default all CPUs), WARM_UP_ROWS (rows of each worker's start-up speed measurement,
# default 1: at full depth 8 rows are ~50 TFLOP, minutes on a small CPU; 0 skips it and leaves
# the measuring to the coordinator's warm-up; use 8 on a GPU), PROMPT.
set -euo pipefail
M=${1:-mrank}
MODEL=${MODEL:-models/bge-reranker-v2.5-gemma2-lightweight}
PROMPT=${PROMPT:-Predict whether passage B contains an answer to query A.}
args=(--model "$MODEL" --max-len 512 --prompt "$PROMPT")
args+=(--warm-up-rows "${WARM_UP_ROWS:-1}")
[ -n "${THREADS:-}" ] && args+=(--threads "$THREADS")
trap 'kill $(jobs -p) 2>/dev/null; wait' TERM INT
"$M" worker "${args[@]}" --listen "127.0.0.1:${LIGHT_PORT:-7211}" \
  --metrics-port "${LIGHT_METRICS:-9211}" &
"$M" worker "${args[@]}" --listen "127.0.0.1:${FULL_PORT:-7212}" \
  --metrics-port "${FULL_METRICS:-9212}" &
wait
