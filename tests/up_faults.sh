#!/usr/bin/env bash
# up_faults.sh: `mrank up` supervises its cluster. Usage: bash tests/up_faults.sh path/to/mrank
# (from the repo root). A 2-pool cluster (deploy/local.json on free loopback ports, the bundled
# models/mrank-tiny) under `mrank up`:
#  a. SIGKILL the full pool's only worker: `mrank up` logs it, restarts it (new pid), the
#     cluster keeps answering while it is away, and every request once it is back is answered
#     in full;
#  b. SIGKILL the coordinator: restarted, answers again;
#  c. SIGINT with 5 slow-ish Rerank requests in flight: all 5 answered OK (the coordinator
#     drains before any worker is stopped), `mrank up` exits 0, no process left;
#  d. a crash loop (--max-restarts 1, the worker killed twice): `mrank up` gives up with a
#     message, exits 1, no process left.
# Only loopback; every wait is bounded in count; everything started is killed on exit (trap).
set -euo pipefail
MRANK=$(readlink -f "$1")
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
work=$(mktemp -d /tmp/mr_upf_XXXXXX)
uppid=
seen=()   # every child pid seen, for the cleanup and the no-process-left checks
cleanup() {
  if [ -n "$uppid" ]; then kill -KILL "$uppid" 2>/dev/null || true; fi
  for p in "${seen[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; echo "== mrank up log" >&2; tail -30 "$work/up.log" >&2 || true; exit 1; }
step() { echo "== $*"; }

# Free ports: bound to port 0 by the kernel, then released (a parallel test could take one in
# between; the window is short).
read -r PC PM PW1 PW2 < <($PY -c '
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
$PY - "$work/up.json" "$PC" "$PM" "$PW1" "$PW2" <<'PYEOF'
import json, sys
out, pc, pm, pw1, pw2 = sys.argv[1:]
c = json.load(open("deploy/local.json"))
c["coordinator"] = {"listen": "127.0.0.1:" + pc, "metrics_port": int(pm)}
for pool, port in zip(c["pools"], (pw1, pw2)):
    pool["addresses"] = ["127.0.0.1:" + port]
    pool.pop("metrics_port_base", None)
# no deadline: answers depend on the workers only, not on the speed of a shared machine
c["tiers"] += [{"name": "soft", "budget_ms": 0, "priority": 1, "profile": "cascade",
                "allow_degraded": True},
               {"name": "exact", "budget_ms": 0, "priority": 1, "profile": "cascade",
                "allow_degraded": False}]
json.dump(c, open(out, "w"))
PYEOF
ADDR=127.0.0.1:$PC

# Documents: 100 per request, 40 words each (the config cuts pairs at 64 tokens): five such
# requests at once stay under one worker's admission budget (65536 tokens in flight).
$PY - "$work/docs.txt" <<'PYEOF'
import random, sys
random.seed(3)
words = "paris france capital city river museum tower germany berlin population china".split()
docs = [" ".join(random.choice(words) for _ in range(40)) + f" ({i})." for i in range(100)]
open(sys.argv[1], "w").write("\n".join(docs) + "\n")
PYEOF

# The driver: the repository's Python grpcio client, used as a module.
cat >"$work/drive.py" <<'PYEOF'
import json, os, signal, sys, time, urllib.request
sys.path.insert(0, "tests/clients")
import grpc
import rerank_client as rc

cmd, addr = sys.argv[1], sys.argv[2]
pb = rc.load_pb2()
ch = grpc.insecure_channel(addr)
rerank = ch.unary_unary("/mrank.v1.Ranker/Rerank",
                        request_serializer=lambda m: m.SerializeToString(),
                        response_deserializer=pb.RerankResponse.FromString)
docs = rc.read_docs(sys.argv[3])


def request(n, tier):
    req = pb.RerankRequest(query="what is the capital of France?", tier=tier)
    for d in docs[:n]:
        req.documents.add(text=d)
    return req


def send(req):
    """'full', 'degraded' or the gRPC status name."""
    try:
        r = rerank(req, timeout=20)
        return "degraded" if r.degraded else "full"
    except grpc.RpcError as e:
        return e.code().name


if cmd == "restart":
    # argv: log, needle. Requests one after another: 'during' until the log shows the needle
    # (the restarted worker is SERVING), 'after' until the first full answer (the coordinator
    # routes to the restarted replica again), then 'final': 10 more.
    log, needle = sys.argv[4], sys.argv[5]
    req = request(12, "soft")
    st = {"during": {}, "after": {}, "final": {}}
    phase = "during"
    for _ in range(400):  # a bound on the count; each call is bounded by its timeout
        if phase == "during" and needle in open(log).read():
            phase = "after"
        out = send(req)
        st[phase][out] = st[phase].get(out, 0) + 1
        if phase == "after" and out == "full":
            phase = "final"
        elif phase == "final" and sum(st["final"].values()) == 10:
            break
        time.sleep(0.05)
    print(json.dumps(st))
elif cmd == "once":
    print(send(request(12, "exact")))
elif cmd == "inflight":
    # argv: metrics port, mrank up pid. 5 Rerank calls of 100 documents at once; SIGINT to
    # mrank up once the coordinator counts all 5 in flight; then collect the answers.
    mport, uppid = sys.argv[4], int(sys.argv[5])
    futs = [rerank.future(request(100, "exact"), timeout=60) for _ in range(5)]
    inflight = -1
    for _ in range(500):
        body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics",
                                      timeout=2).read().decode()
        inflight = int(float([l.split()[1] for l in body.splitlines()
                              if l.startswith("mrank_coord_inflight_requests ")][0]))
        if inflight >= 5 or any(f.done() for f in futs):
            break
        time.sleep(0.01)
    done_before = sum(f.done() for f in futs)
    os.kill(uppid, signal.SIGINT)
    outs = []
    for f in futs:
        try:
            r = f.result()
            outs.append("degraded" if r.degraded else
                        "full" if len(r.results) == 100 else f"{len(r.results)} results")
        except grpc.RpcError as e:
            outs.append(e.code().name)
    print(json.dumps({"inflight_at_sigint": inflight, "done_before_sigint": done_before,
                      "answers": outs}))
PYEOF
DRIVE="$PY $work/drive.py"

# start_up NAME ARGS...: starts mrank up in the background (uppid) and waits (bounded) until
# it prints the coordinator address; 3 children expected.
start_up() {
  local name=$1; shift
  "$MRANK" up --config "$work/up.json" --threads 1 --timeout-s 100 "$@" \
    >"$work/$name.out" 2>"$work/up.log" &
  uppid=$!
  for _ in $(seq 1 600); do
    grep -q "^coordinator: " "$work/$name.out" 2>/dev/null && break
    kill -0 "$uppid" 2>/dev/null || fail "mrank up exited before it was ready"
    sleep 0.2
  done
  grep -q "^coordinator: $ADDR" "$work/$name.out" || fail "mrank up never printed the address"
  local kids
  mapfile -t kids < <(pgrep -P "$uppid")
  [ ${#kids[@]} = 3 ] || fail "mrank up has children '${kids[*]}', expected 3"
  seen+=("${kids[@]}")
}
# child_pid PATTERN: the pid of mrank up's child whose command line matches PATTERN
child_pid() { pgrep -P "$uppid" -f -- "$1" || true; }
# wait_log NEEDLE: waits (bounded) until the log holds NEEDLE
wait_log() {
  for _ in $(seq 1 300); do grep -qF -- "$1" "$work/up.log" && return 0; sleep 0.1; done
  fail "the log never said '$1'"
}
# wait_exit: waits (bounded) for mrank up to exit; sets up_rc; clears uppid
wait_exit() {
  # 450 x 0.1 s: longer than mrank up's whole ordered stop (coordinator 30 s, workers 10 s is
  # the worst case; the cases here need a few seconds)
  for _ in $(seq 1 450); do kill -0 "$uppid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$uppid" 2>/dev/null && fail "mrank up still running after 450 waits"
  up_rc=0
  wait "$uppid" || up_rc=$?
  uppid=
}
# none_left: no pid mrank up ever had still exists (mrank up reaps before it exits); a pid
# reused since by an unrelated process is told apart by its command line
none_left() {
  local cmd
  for p in "${seen[@]}"; do
    cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline") || continue
    [ -d "/proc/$p" ] && [[ -z "$cmd" || "$cmd" == mrank* ]] \
      && fail "child $p still exists after mrank up exited: '$cmd'"
  done
  return 0
}

step "start: 2 pools (cheap 127.0.0.1:$PW1, full 127.0.0.1:$PW2), coordinator $ADDR"
start_up up
[ "$($DRIVE once "$ADDR" "$work/docs.txt")" = full ] || fail "first request not answered in full"

step "a. SIGKILL the full pool's worker"
wpid=$(child_pid "worker .*--listen 127.0.0.1:$PW2( |$)")
[ -n "$wpid" ] || fail "no worker child for 127.0.0.1:$PW2"
kill -KILL "$wpid"
$DRIVE restart "$ADDR" "$work/docs.txt" "$work/up.log" \
  "worker full[0] 127.0.0.1:$PW2 SERVING again" >"$work/restart.json" || fail "driver"
echo "  requests by phase: $(cat "$work/restart.json")"
grep -qF "worker full[0] 127.0.0.1:$PW2 (pid $wpid) killed by signal 9" "$work/up.log" \
  || fail "no log line for the killed worker"
grep -qF "restarted worker full[0] 127.0.0.1:$PW2: pid" "$work/up.log" || fail "no restart line"
npid=$(child_pid "worker .*--listen 127.0.0.1:$PW2( |$)")
[ -n "$npid" ] && [ "$npid" != "$wpid" ] || fail "worker pid '$npid' after the restart (was $wpid)"
seen+=("$npid")
[ "$(pgrep -P "$uppid" | wc -l)" = 3 ] || fail "not 3 children after the restart"
$PY - "$work/restart.json" <<'PYEOF' || fail "answers around the restart"
import json, sys
s = json.load(open(sys.argv[1]))
during, after, final = s["during"], s["after"], s["final"]
n = sum(during.values())
ok = during.get("full", 0) + during.get("degraded", 0)
# While the full pool's only worker is away the cheap pool still ranks every request and the
# tier allows a degraded answer: each request is answered (a stage-1 ranking at worst). 0.9
# rather than 1.0 leaves room for a call caught by the kill itself.
assert n >= 1 and ok >= 0.9 * n, f"while the worker was away: {during}"
assert set(after) <= {"full", "degraded"}, f"after SERVING again: {after}"
# Once a full answer came back the coordinator routes to the restarted replica again and
# nothing else fails: every request is answered in full.
assert final == {"full": 10}, f"after the first full answer: {final}"
print(f"  while away: {ok}/{n} answered ({during.get('degraded', 0)} degraded); "
      f"then {sum(after.values())} until the first full answer; then 10/10 in full")
PYEOF
echo "  worker $wpid -> $npid, 3 children"

step "b. SIGKILL the coordinator"
cpid=$(child_pid "coordinator ")
[ -n "$cpid" ] || fail "no coordinator child"
kill -KILL "$cpid"
wait_log "coordinator $ADDR SERVING again"
ncpid=$(child_pid "coordinator ")
[ -n "$ncpid" ] && [ "$ncpid" != "$cpid" ] || fail "coordinator pid '$ncpid' (was $cpid)"
seen+=("$ncpid")
[ "$($DRIVE once "$ADDR" "$work/docs.txt")" = full ] || fail "no full answer after the restart"
echo "  coordinator $cpid -> $ncpid, answers in full"

step "c. SIGINT with 5 Rerank requests in flight"
$DRIVE inflight "$ADDR" "$work/docs.txt" "$PM" "$uppid" >"$work/inflight.json" || fail "driver"
echo "  $(cat "$work/inflight.json")"
wait_exit
[ "$up_rc" = 0 ] || fail "mrank up exited $up_rc after SIGINT"
none_left
$PY - "$work/inflight.json" <<'PYEOF' || fail "in-flight requests at SIGINT"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["inflight_at_sigint"] == 5 and s["done_before_sigint"] == 0, f"not all in flight: {s}"
assert s["answers"] == ["full"] * 5, s["answers"]
PYEOF
# the order of the exits in mrank up's log: the coordinator's before both workers'
grep -E "^mrank up: (coordinator|worker) .* exited" "$work/up.log" | tail -3 >"$work/order.txt"
[ "$(head -1 "$work/order.txt" | cut -d' ' -f3)" = coordinator ] \
  && [ "$(grep -c "exited with status 0" "$work/order.txt")" = 3 ] \
  || fail "stop order / statuses: $(cat "$work/order.txt")"
echo "  5/5 answered in full; exit 0; the coordinator exited (status 0) before both workers; no process left"

step "d. crash loop: --max-restarts 1, a worker killed twice"
seen=()
start_up up2 --max-restarts 1
wpid=$(child_pid "worker .*--listen 127.0.0.1:$PW1( |$)")
[ -n "$wpid" ] || fail "no worker child for 127.0.0.1:$PW1"
kill -KILL "$wpid"
wait_log "worker cheap[0] 127.0.0.1:$PW1 SERVING again"
npid=$(child_pid "worker .*--listen 127.0.0.1:$PW1( |$)")
[ -n "$npid" ] || fail "no restarted worker"
seen+=("$npid")
kill -KILL "$npid"
wait_exit
[ "$up_rc" = 1 ] || fail "mrank up exited $up_rc after a crash loop, expected 1"
grep -qF "crash loop, giving up" "$work/up.log" || fail "no crash-loop message"
none_left
echo "  $(grep -F "crash loop" "$work/up.log")"
echo "  exit 1, no process left"
echo PASS
