# harness.bash: what every cluster script test sets up first (sourced from the repository root,
# after the script's `cd`): `mr_harness NAME` makes the work folder $work (/tmp/mr_NAME_XXXXXX),
# the array $pids of processes to stop, a cleanup on EXIT (SIGTERM to each, SIGKILL 0.3 s later,
# reap, remove $work) and `fail MSG` (prints MSG and the last $MR_FAIL_TAIL (default 5) lines of
# every $work/*.log and of $work/$MR_FAIL_EXTRA (a glob) when set, exits 1).
PY=/usr/bin/python3
mr_harness() {
  work=$(mktemp -d "/tmp/mr_$1_XXXXXX")
  pids=()
  trap mr_harness_cleanup EXIT
}
mr_harness_cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
fail() {
  echo "FAIL: $*" >&2
  # shellcheck disable=SC2086
  for f in "$work"/*.log ${MR_FAIL_EXTRA:+"$work"/$MR_FAIL_EXTRA}; do
    [ -e "$f" ] && { echo "== $f"; tail -"${MR_FAIL_TAIL:-5}" "$f"; }
  done >&2
  exit 1
}

# The small cluster most script tests talk to, in steps a test can take apart:
#   mr_ports K          ports from a random base ending in digit K (one per script keeps
#                       concurrent tests apart): $PC coordinator, $PW worker, $P2 and $P3 spare;
#   mr_tiny_model       a seeded 4-layer f32 Mistral-shaped checkpoint in $work/model (llama2
#                       tokenizer; start layer 1: exits 1..4);
#   mr_tiny_config PROFILE [COORD_FIELDS]
#                       $work/cluster.json: pool 'full' = the worker at $PW, tier 'exact' (no
#                       budget, the default) on profile p: PROFILE 'one' = stage full (depth 4),
#                       'two' = stage half (depth 2, keep 2) then full; COORD_FIELDS is the body
#                       of its "coordinator" object (unset: "metrics_port": 0);
#   mr_start_worker [ARGS]       `mrank worker` on $PW (1 thread, log worker.log): $wpid;
#   mr_start_coordinator [ARGS]  `mrank coordinator` on $PC (log coord.log): $cpid;
#   mr_wait_serving     the coordinator answers SERVING (at most 120 s), else fail.
# They need $MRANK and the work folder of mr_harness.
mr_ports() {
  local base=$(( 20000 + (RANDOM % 2000) * 10 + $1 ))
  PC=$base PW=$((base + 1)) P2=$((base + 2)) P3=$((base + 3))
}
mr_tiny_model() {
  "$MRANK" init-checkpoint --arch mistral --layers 4 --hidden 64 --heads 4 --kv-heads 2 \
    --intermediate 128 --vocab-from third_party/tokenizers/llama2/tokenizer.json \
    --start-layer 1 --dtype f32 --seed 1 --out "$work/model" >/dev/null || fail "init-checkpoint"
}
mr_tiny_config() {
  local stages='{"name": "full", "pool": "full", "depth": 4}' prof='{"stage": "full"}'
  local coord=${2-'"metrics_port": 0'}
  if [ "$1" = two ]; then
    stages='{"name": "half", "pool": "full", "depth": 2}, '$stages
    prof='{"stage": "half", "keep_top_k": 2}, '$prof
  fi
  cat >"$work/cluster.json" <<JSON
{
  "model": "$work/model",
  "coordinator": {$coord},
  "pools": [{"name": "full", "addresses": ["127.0.0.1:$PW"]}],
  "stages": [$stages],
  "profiles": [{"name": "p", "stages": [$prof]}],
  "tiers": [{"name": "exact", "budget_ms": 0, "priority": 1, "profile": "p"}],
  "default_tier": "exact"
}
JSON
}
mr_start_worker() {
  "$MRANK" worker --model "$work/model" --listen "127.0.0.1:$PW" --threads 1 "$@" \
    2>>"$work/worker.log" &
  wpid=$!
  pids+=("$wpid")
}
mr_start_coordinator() {
  "$MRANK" coordinator --config "$work/cluster.json" --listen "127.0.0.1:$PC" "$@" \
    2>>"$work/coord.log" &
  cpid=$!
  pids+=("$cpid")
}
mr_wait_serving() {
  $PY tests/clients/rerank_client.py wait "127.0.0.1:$PC" --timeout 120 >/dev/null ||
    fail "coordinator not SERVING"
}
