#!/usr/bin/env bash
# structured_logs.sh: --log-format json and --log-level on the worker, the coordinator and
# `mrank up` (which passes both to its children): with json every stderr line of every process
# is one JSON object with time (RFC 3339 UTC), level, component, event, request_id, trace_id
# and msg, the serving events are there with the messages the text format prints; --log-level
# error drops them; bad values are refused with exit 2; the default stays the text lines tests
# and docs know ("mrank worker: serving on port ...").
# Usage: bash tests/structured_logs.sh path/to/mrank   (from the repo root)
set -euo pipefail
MRANK=$(readlink -f "${1:?usage: structured_logs.sh path/to/mrank}")
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
. tests/lib/harness.bash
mr_harness logs

for bad in "--log-level loud" "--log-format xml"; do
  # shellcheck disable=SC2086
  set +e; "$MRANK" worker $bad --model x --listen 127.0.0.1:0 2>"$work/bad.err"; rc=$?; set -e
  [ $rc = 2 ] || fail "worker $bad: exit $rc"
  grep -q -- "${bad%% *}" "$work/bad.err" || fail "worker $bad: $(head -1 "$work/bad.err")"
done
echo "ok: bad --log-level / --log-format refused (exit 2)"

mr_ports 3
PW2=$P2
mr_tiny_model
mr_tiny_config one '"listen": "127.0.0.1:'"$PC"'", "metrics_port": 0'

# mrank up with json: its own lines and its children's (they share its stderr)
"$MRANK" up --config "$work/cluster.json" --threads 1 --log-format json --log-level info \
  >"$work/up.out" 2>"$work/up.log" &
uppid=$!
pids+=($uppid)
for _ in $(seq 1200); do grep -q "127.0.0.1:$PC" "$work/up.out" 2>/dev/null && break; sleep 0.1; done
grep -q "127.0.0.1:$PC" "$work/up.out" || fail "mrank up did not print the coordinator address"
kill -INT "$uppid"
wait "$uppid" || fail "mrank up exit status $?"
$PY - "$work/up.log" <<'PYEOF' || fail "json log lines"
import json, re, sys
events = {}
for n, line in enumerate(open(sys.argv[1]), 1):
    try:
        o = json.loads(line)   # every line is one JSON object
    except ValueError:
        raise AssertionError(f"line {n} is not JSON: {line!r}")
    for k in ("time", "level", "component", "event", "request_id", "trace_id", "msg"):
        assert k in o, f"line {n}: no {k}: {line}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", o["time"]), o["time"]
    assert o["level"] in ("error", "warn", "info", "debug"), o["level"]
    events.setdefault((o["component"], o["event"]), []).append(o["msg"])
for want in (("worker", "serving"), ("coordinator", "serving"), ("up", "started"),
             ("coordinator", "draining"), ("worker", "stopped"), ("up", "stopped")):
    assert want in events, f"no {want} in {sorted(events)}"
assert events[("worker", "serving")][0].startswith("serving on port "), events[("worker", "serving")]
PYEOF
echo "ok: mrank up --log-format json: every line of up, coordinator and worker is a JSON event"

# --log-level error: no info events; default format: the text lines
"$MRANK" worker --model "$work/model" --listen 127.0.0.1:$PW2 --threads 1 --log-level error \
  2>"$work/quiet.log" &
qpid=$!
pids+=($qpid)
"$MRANK" worker --model "$work/model" --listen 127.0.0.1:0 --threads 1 2>"$work/text.log" &
tpid=$!
pids+=($tpid)
for _ in $(seq 600); do grep -q "serving on port" "$work/text.log" && break; sleep 0.1; done
grep -q "^mrank worker: serving on port [0-9]* metrics-port" "$work/text.log" ||
  fail "default text format changed: $(head -2 "$work/text.log")"
$PY tests/clients/worker_client.py wait 127.0.0.1:$PW2 60 >/dev/null || fail "quiet worker not SERVING"
kill -TERM "$qpid" "$tpid"
wait "$qpid" || fail "quiet worker exit $?"
wait "$tpid" || true
[ ! -s "$work/quiet.log" ] || fail "--log-level error still logged: $(head -3 "$work/quiet.log")"
echo "ok: --log-level error logs nothing on a clean run; the default is the text format"
echo PASS
