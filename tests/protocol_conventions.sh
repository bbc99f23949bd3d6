#!/usr/bin/env bash
# protocol_conventions.sh: the gRPC conventions a user's tooling expects, against a real worker
# and coordinator on loopback, driven by tests/clients/conventions_client.py (Debian
# python3-grpcio; nobody's stub but protoc's):
#  1. grpc.health.v1 Health/Watch: the current status at once, then each change only (the
#     coordinator goes NOT_SERVING when its only worker dies and SERVING when one is back);
#     an unknown service gets SERVICE_UNKNOWN and stays open; a client that cancels its watch
#     leaves the server healthy; at SIGTERM an open watch gets NOT_SERVING and ends UNAVAILABLE.
#  2. server reflection (grpc.reflection.v1 and v1alpha): the coordinator lists
#     mrank.v1.Ranker and grpc.health.v1.Health, the worker mrank.v1.Worker; their methods are
#     described from the returned FileDescriptorProtos; an unknown symbol is NOT_FOUND (5).
# Usage: bash tests/protocol_conventions.sh path/to/mrank   (from the repo root)
set -euo pipefail
MRANK=$(readlink -f "${1:?usage: protocol_conventions.sh path/to/mrank}")
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
CC="$PY tests/clients/conventions_client.py"
RC="$PY tests/clients/rerank_client.py"
. tests/lib/harness.bash
mr_harness conv
MR_FAIL_TAIL=8
MR_FAIL_EXTRA='*.watch'
# wait_line FILE REGEX [TRIES [AFTER]]: polls (0.1 s) until a line of FILE after its first
# AFTER lines matches
wait_line() {
  for _ in $(seq "${3:-600}"); do
    tail -n +$(( ${4:-0} + 1 )) "$1" 2>/dev/null | grep -qE "$2" && return 0
    sleep 0.1
  done
  return 1
}

mr_ports 5
mr_tiny_model
mr_tiny_config one
mr_start_worker
mr_start_coordinator --drain-ms 60000   # the shutdown check below: a drain it must not wait out
for _ in $(seq 300); do grep -q "serving on port" "$work/coord.log" && break; sleep 0.1; done

echo "-- Health/Watch"
$CC watch 127.0.0.1:$PC "" "$work/all.watch" & pids+=($!)
$CC watch 127.0.0.1:$PC "nope" "$work/unknown.watch" & pids+=($!)
$CC watch 127.0.0.1:$PC "mrank.v1.Ranker" "$work/cancel.watch" --cancel-after 1 &
cancel_pid=$!
wait_line "$work/all.watch" '^SERVING$' || fail "the watch of \"\" never saw SERVING"
wait_line "$work/unknown.watch" '^SERVICE_UNKNOWN$' || fail "unknown service: no SERVICE_UNKNOWN"
wait "$cancel_pid" || fail "the cancelling watch client failed"
grep -qx CANCELLED "$work/cancel.watch" || fail "the client could not cancel its watch"
$RC wait 127.0.0.1:$PC --timeout 30 >/dev/null || fail "not SERVING after a client cancelled a watch"
echo "ok: current status at once; SERVICE_UNKNOWN for an unknown service; client cancel"

before=$(wc -l <"$work/all.watch")
kill -KILL "$wpid"; wait "$wpid" 2>/dev/null || true
wait_line "$work/all.watch" '^NOT_SERVING$' 600 "$before" || fail "no NOT_SERVING after the worker died"
before=$(wc -l <"$work/all.watch")
mr_start_worker
wait_line "$work/all.watch" '^SERVING$' 900 "$before" || fail "no SERVING once a worker is back"
# only changes are sent: no two equal statuses in a row
$PY - "$work/all.watch" <<'PYEOF' || fail "repeated status: $(cat "$work/all.watch")"
import sys
lines = open(sys.argv[1]).read().split()
assert all(a != b for a, b in zip(lines, lines[1:])), lines
PYEOF
echo "ok: NOT_SERVING when the pool died, SERVING when it is back; changes only ($(tr '\n' ' ' <"$work/all.watch"))"

echo "-- server reflection"
for v in v1 v1alpha; do
  $CC reflect 127.0.0.1:$PC --version $v >"$work/refl_coord_$v.json" ||
    fail "coordinator reflection $v: $(cat "$work/refl_coord_$v.json")"
  $CC reflect 127.0.0.1:$PW --version $v >"$work/refl_worker_$v.json" ||
    fail "worker reflection $v: $(cat "$work/refl_worker_$v.json")"
  $PY - "$work/refl_coord_$v.json" "$work/refl_worker_$v.json" <<'PYEOF' || fail "reflection $v"
import json, sys
coord, worker = (json.load(open(p)) for p in sys.argv[1:3])
for r, svc in ((coord, "mrank.v1.Ranker"), (worker, "mrank.v1.Worker")):
    assert svc in r["services"], r["services"]
    assert "grpc.health.v1.Health" in r["services"], r["services"]
    assert "mrank.proto" in r["files"], r["files"]
    assert r["by_filename"][0] == "mrank.proto", r["by_filename"]
    assert r["unknown_symbol"] == 5, r["unknown_symbol"]     # NOT_FOUND
assert "mrank.v1.Worker" not in coord["services"], coord["services"]
m = coord["methods"]
assert "Rerank (mrank.v1.RerankRequest) returns (mrank.v1.RerankResponse)" in m["mrank.v1.Ranker"], m
assert "RerankStream (mrank.v1.RerankRequest) returns (stream mrank.v1.RerankResponse)" in m["mrank.v1.Ranker"], m
assert "Watch (grpc.health.v1.HealthCheckRequest) returns (stream grpc.health.v1.HealthCheckResponse)" in m["grpc.health.v1.Health"], m
assert "Score (mrank.v1.ScoreRequest) returns (mrank.v1.ScoreResponse)" in worker["methods"]["mrank.v1.Worker"], worker
PYEOF
  echo "ok: reflection $v lists and describes the coordinator's and the worker's services"
done

echo "-- shutdown ends open watches and silent reflection streams"
# a reflection stream that stays open without a word waits on its client, not on work: the
# drain (--drain-ms 60000 here) must not wait for it (it did: SIGTERM took the whole drain)
$CC silent "127.0.0.1:$PC" >"$work/silent.out" 2>&1 &
spid=$!
pids+=("$spid")
wait_line "$work/silent.out" '^OPEN$' 300 || fail "the silent reflection stream did not open"
t0=$(date +%s)
kill -TERM "$cpid"
for _ in $(seq 300); do kill -0 "$cpid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$cpid" 2>/dev/null &&
  fail "coordinator still draining 30 s after SIGTERM (drain 60 s): the silent stream held it"
wait "$cpid" || fail "coordinator exit status $? after SIGTERM"
echo "ok: SIGTERM with a silent reflection stream open: exited after $(( $(date +%s) - t0 )) s"
wait_line "$work/silent.out" '^END ' 100 || fail "the silent stream did not end: $(cat "$work/silent.out")"
wait_line "$work/all.watch" '^END UNAVAILABLE$' 100 || fail "the watch did not end UNAVAILABLE"
tail -2 "$work/all.watch" | head -1 | grep -qx NOT_SERVING || fail "no NOT_SERVING before the end"
wait_line "$work/unknown.watch" '^END UNAVAILABLE$' 100 || fail "the unknown-service watch did not end"
echo "ok: SIGTERM: NOT_SERVING, then UNAVAILABLE"
echo PASS
