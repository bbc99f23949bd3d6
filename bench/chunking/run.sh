#!/usr/bin/env bash
# bench/chunking/run.sh: chunking of long documents against plain truncation (docs/results.md,
# "Chunking"). Usage: bash bench/chunking/run.sh [BUILD_DIR] [OUT_DIR] (defaults build,
# out/chunking). Env: COLLS (default "cranfield medline"), SETTINGS (chunk_eval.py's, default
# plain, max:max, max:half, 16:8), PROFILE (default full-only), QUERIES (0 = every judged
# query), THREADS (worker compute threads, default 2).
# Starts one worker (models/mrank-tiny, max_len 64) and a coordinator on free loopback ports,
# with deploy/local.json's pair budget (max_tokens_per_pair 64) and stages (half-r2: exit 2,
# ratio 2, compress layer 1, vertical + width-2 adapters; full: exit 4) and profiles neural and
# full-only, one tier without a budget, and limits.max_documents 2000 (100 candidates in chunks of
# 12-40 estimated tokens are up to 1600 rows: a request may not score more rows than
# max_documents), and the worker admits 262144 tokens in flight (default 65536: a request of
# 1600 rows of ~60 tokens is sent at once as calls of max_batch_tokens, and one worker would
# refuse the rest with RESOURCE_EXHAUSTED, as it would a plain request of as many tokens). Then
# bench/chunking/chunk_eval.py re-ranks each collection's BM25 top-100 per
# setting. Both processes are stopped at exit. Output: OUT_DIR/results.jsonl, per_query.jsonl and the logs.
set -euo pipefail
cd "$(dirname "$0")/../.."
B=$(readlink -f "${1:-build}")
O=${2:-out/chunking}
COLLS=${COLLS:-cranfield medline}
SETTINGS=${SETTINGS:-plain,max:max,max:half,16:8}
PROFILE=${PROFILE:-full-only}
QUERIES=${QUERIES:-0}
THREADS=${THREADS:-2}
IR=../shared/data/ir
PY=/usr/bin/python3
mkdir -p "$O"
read -r PC PW <<<"$($PY -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])
for x in s: x.close()')"
cat >"$O/cluster.json" <<JSON
{
  "model": "models/mrank-tiny",
  "limits": {"max_documents": 2000, "max_tokens_per_pair": 64},
  "pools": [{"name": "p", "addresses": ["127.0.0.1:$PW"],
             "adapters": {"vert": "models/mrank-tiny/adapters/vertical",
                          "w2": "models/mrank-tiny/adapters/width-2"}}],
  "stages": [
    {"name": "half-r2", "pool": "p", "depth": 2, "compress_ratio": 2, "compress_layers": [1],
     "adapters": ["vert", "w2"]},
    {"name": "full", "pool": "p", "depth": 4}],
  "profiles": [
    {"name": "neural", "stages": [
      {"stage": "half-r2", "keep_top_k": 50, "keep_fraction": 0.25}, {"stage": "full"}]},
    {"name": "full-only", "stages": [{"stage": "full"}]}],
  "tiers": [{"name": "batch", "budget_ms": 0, "priority": 0, "profile": "full-only"}]
}
JSON
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
"$B/mrank" worker --model models/mrank-tiny --listen "127.0.0.1:$PW" --threads "$THREADS" \
  --max-len 64 --max-inflight-tokens 262144 --adapter vert=models/mrank-tiny/adapters/vertical \
  --adapter w2=models/mrank-tiny/adapters/width-2 2>"$O/worker.log" &
pids+=($!)
"$B/mrank" coordinator --config "$O/cluster.json" --listen "127.0.0.1:$PC" 2>"$O/coord.log" &
pids+=($!)
$PY tests/clients/rerank_client.py wait "127.0.0.1:$PC" --timeout 120 >/dev/null
dirs=()
for c in $COLLS; do dirs+=("$IR/$c"); done
nice $PY bench/chunking/chunk_eval.py "127.0.0.1:$PC" "${dirs[@]}" --profile "$PROFILE" \
  --settings "$SETTINGS" --queries "$QUERIES" --per-query "$O/per_query.jsonl" |
  tee "$O/results.jsonl"
