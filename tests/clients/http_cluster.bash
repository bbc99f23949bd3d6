# http_cluster.bash: sourced by tests/http_api.sh and tests/http_cohere_sdk.sh (from the repo
# root, with MRANK set): a `mrank up` cluster of deploy/local.json on free loopback ports with
# the bundled models/mrank-tiny, API keys (KEY_ALL: every tier; KEY_BATCH: tier batch only),
# the extra tiers "soft" (no budget) and "tight" (200 ms, for overload), and max_inflight 2 so
# that overload is reachable with a few requests. Sets work (temp dir, removed on exit), H
# (http://HOST:PORT from `mrank up`'s "http:" line), ADDR (gRPC), MPORT (metrics), PY.
# Every wait is bounded; everything started is killed on exit (trap).
PY=/usr/bin/python3
work=$(mktemp -d /tmp/mr_http_XXXXXX)
uppid=
extra_pids=()
cleanup() {
  if [ -n "$uppid" ]; then kill -TERM "$uppid" 2>/dev/null || true; fi
  for p in "${extra_pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do kill -0 "$uppid" 2>/dev/null || break; sleep 0.1; done
  if [ -n "$uppid" ]; then kill -KILL "$uppid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; echo "== mrank up log" >&2; tail -30 "$work/up.log" >&2 || true; exit 1; }

KEY_ALL=k-all-$RANDOM$RANDOM
KEY_BATCH=k-batch-$RANDOM$RANDOM
sha() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
cat >"$work/keys.json" <<KEOF
[{"name": "team-all", "sha256": "$(sha "$KEY_ALL")", "tiers": ["interactive", "standard", "batch", "soft", "tight"]},
 {"name": "team-batch", "sha256": "$(sha "$KEY_BATCH")", "tiers": ["batch"]}]
KEOF
read -r PC PM PW1 PW2 < <($PY -c '
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
MPORT=$PM
ADDR=127.0.0.1:$PC
$PY - "$work" "$PC" "$PM" "$PW1" "$PW2" <<'PYEOF'
import json, sys
w, pc, pm, pw1, pw2 = sys.argv[1:]
c = json.load(open("deploy/local.json"))
c["coordinator"] = {"listen": "127.0.0.1:" + pc, "metrics_port": int(pm)}   # http: mrank up's pick
for pool, port in zip(c["pools"], (pw1, pw2)):
    pool["addresses"] = ["127.0.0.1:" + port]
    pool.pop("metrics_port_base", None)
c["limits"].update({"max_inflight": 2, "max_documents": 200, "max_request_bytes": 65536})
for prof in c["profiles"]:   # max_documents 200 bounds every override cap
    for st in prof["stages"]:
        if st.get("max_keep_top_k", 0) > 200:
            st["max_keep_top_k"] = 200
# the neural cascade (half-r2 -> full): the checks below name its two stages
c["tiers"] += [{"name": "soft", "budget_ms": 0, "priority": 1, "profile": "neural",
                "allow_degraded": True},
               {"name": "tight", "budget_ms": 200, "priority": 1, "profile": "full-only",
                "allow_degraded": False}]
c["default_tier"] = "soft"   # answers depend on the workers only, not a shared machine's speed
c["security"] = {"api_keys": w + "/keys.json"}
json.dump(c, open(w + "/up.json", "w"))
# the same pools on ports nobody serves: a coordinator that never gets ready (503)
for pool in c["pools"]:
    pool["addresses"] = ["127.0.0.1:1"]
c["coordinator"] = {"listen": "127.0.0.1:0"}
c.pop("security")
json.dump(c, open(w + "/dead.json", "w"))
PYEOF
"$MRANK" up --config "$work/up.json" >"$work/up.out" 2>"$work/up.log" &
uppid=$!
for _ in $(seq 600); do   # 60 s: a busy shared machine
  grep -q '^http: ' "$work/up.out" 2>/dev/null && break
  kill -0 "$uppid" 2>/dev/null || fail "mrank up exited"
  sleep 0.1
done
H=$(sed -n 's/^http: //p' "$work/up.out")
[ -n "$H" ] || fail "mrank up printed no 'http: ' line"
echo "cluster: gRPC $ADDR, $H"
