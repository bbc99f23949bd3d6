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
