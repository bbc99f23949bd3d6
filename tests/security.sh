#!/usr/bin/env bash
# security.sh: the P6 security contract end to end (docs/security.md). Usage:
# bash tests/security.sh path/to/mrank (from the repo root). Certificates are made here by
# scripts/make-certs.sh (openssl), twice: the second set is "another CA". A 2-pool cluster
# (deploy/local.json on free loopback ports, models/mrank-tiny) runs under `mrank up` with
# security.tls (+ client_ca), security.internal and security.api_keys, and:
#  a. public port under mTLS: a plaintext client, a TLS client without a certificate and a
#     client certificate from another CA are refused (UNAVAILABLE: no handshake);
#  b. API keys: no key and a wrong key -> UNAUTHENTICATED; a key outside its tiers ->
#     PERMISSION_DENIED; the right key gets a full ranking; grpc.health.v1 answers without a
#     key, Ranker/Info does not; the metrics count per key name and never show a key;
#  b3. the HTTP/JSON port (mrank up's "http:" line) serves HTTPS with the same certificate:
#     the client certificate is required (401 without, or from another CA), then API keys
#     (401 / 403) as on gRPC; plaintext HTTP gets no answer;
#  c. worker ports: plaintext, the public client certificate and another CA's internal
#     certificate are refused; the internal certificate gets through (UNIMPLEMENTED for a
#     Ranker method: the handshake passed);
#  d. no listener of the cluster on a wildcard address (ss -ltnp over its processes);
#  e. an invalid request's error names stage and pool, never a worker address;
#  f. rotation: the server certificate and key are replaced (rename, as cert-manager does)
#     while requests keep going, each one answered; new connections see the new certificate,
#     on the gRPC port and on the HTTPS port (coordinator/http_tls.c) alike;
#  g. bad files: a missing certificate and a bad key file are refused at start with a message
#     naming the file and the field.
# Only loopback; every wait is bounded in count; everything started is killed on exit (trap).
set -euo pipefail
MRANK=$(readlink -f "$1")
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
command -v openssl >/dev/null || { echo "SKIP: openssl not installed (scripts/setup.sh installs it)"; exit 77; }
command -v ss >/dev/null || { echo "SKIP: ss (iproute2) not installed"; exit 77; }
work=$(mktemp -d /tmp/mr_sec_XXXXXX)
uppid=
cleanup() {
  if [ -n "$uppid" ]; then
    for p in $(pgrep -P "$uppid" 2>/dev/null || true); do kill -KILL "$p" 2>/dev/null || true; done
    kill -KILL "$uppid" 2>/dev/null || true
  fi
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; echo "== mrank up log" >&2; tail -30 "$work/up.log" >&2 || true; exit 1; }
step() { echo "== $*"; }

scripts/make-certs.sh "$work/c" >/dev/null
scripts/make-certs.sh "$work/other" >/dev/null
C=$work/c
O=$work/other
# the served certificate lives in its own folder, replaced in step f
mkdir "$work/live"
cp "$C/server.pem" "$C/server-key.pem" "$work/live/"
KEY_ALL=$(openssl rand -hex 20)
KEY_BATCH=$(openssl rand -hex 20)
sha() { printf '%s' "$1" | openssl dgst -sha256 -r | cut -d' ' -f1; }
cat >"$work/keys.json" <<EOF
[{"name": "team-all", "sha256": "$(sha "$KEY_ALL")", "tiers": ["interactive", "standard", "batch"]},
 {"name": "team-batch", "sha256": "$(sha "$KEY_BATCH")", "tiers": ["batch"]}]
EOF

read -r PC PM PW1 PW2 PM1 PM2 < <($PY -c '
import socket
ss = [socket.socket() for _ in range(6)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
$PY - "$work" "$PC" "$PM" "$PW1" "$PW2" "$PM1" "$PM2" <<'PYEOF'
import json, sys
w, pc, pm, pw1, pw2, pm1, pm2 = sys.argv[1:]
c = json.load(open("deploy/local.json"))
c["coordinator"] = {"listen": "127.0.0.1:" + pc, "metrics_port": int(pm)}
for pool, port, mport in zip(c["pools"], (pw1, pw2), (pm1, pm2)):
    pool["addresses"] = ["127.0.0.1:" + port]
    pool["metrics_port_base"] = int(mport)
for t in c["tiers"]:   # answers depend on the workers only, not on a shared machine's speed
    t["budget_ms"] = 0
c["security"] = {
    "tls": {"cert": w + "/live/server.pem", "key": w + "/live/server-key.pem",
            "client_ca": w + "/c/client-ca.pem"},
    "internal": {"ca": w + "/c/internal-ca.pem", "cert": w + "/c/internal.pem",
                 "key": w + "/c/internal-key.pem"},
    "api_keys": w + "/keys.json"}
json.dump(c, open(w + "/up.json", "w"))
PYEOF
ADDR=127.0.0.1:$PC
printf 'Paris is the capital of France.\nBerlin is in Germany.\nThe population of China is over 1.4 billion.\nFrance is in Europe; its capital is Paris.\n' >"$work/docs.txt"

# rr OUT [args...]: one Rerank to the coordinator; stdout+stderr to OUT; returns its status
rr() {
  local out=$1
  shift
  timeout 60 "$MRANK" rerank --addr "$ADDR" --query 'what is the capital of France?' \
    --docs "$work/docs.txt" --timeout-ms 20000 "$@" >"$out" 2>&1
}
MTLS=(--ca "$C/ca.pem" --cert "$C/client.pem" --key "$C/client-key.pem")
# expect_fail WHAT STATUS [args...]: a Rerank fails with STATUS
expect_fail() {
  local what=$1 status=$2 rc=0
  shift 2
  rr "$work/out" "$@" || rc=$?
  [ "$rc" -ne 0 ] || fail "$what: answered (expected $status)"
  grep -q "$status" "$work/out" || fail "$what: expected $status, got: $(cat "$work/out")"
  echo "ok: $what -> $status"
}

step "start the secured cluster"
"$MRANK" up --config "$work/up.json" --threads 1 --timeout-s 240 >"$work/up.out" 2>"$work/up.log" &
uppid=$!
for _ in $(seq 1 240); do
  grep -q "cluster ready" "$work/up.out" 2>/dev/null && break
  kill -0 "$uppid" 2>/dev/null || fail "mrank up exited before the cluster was ready"
  sleep 1
done
grep -q "cluster ready" "$work/up.out" || fail "cluster not ready after 240 s"
grep -q "public port TLS + client certs, workers mTLS" "$work/up.out" ||
  fail "mrank up does not report the security setup: $(cat "$work/up.out")"

step "a. the public port under mTLS refuses clients without the right certificate"
expect_fail "plaintext client" UNAVAILABLE --api-key "$KEY_ALL"
expect_fail "TLS client without a certificate" UNAVAILABLE --ca "$C/ca.pem" --api-key "$KEY_ALL"
expect_fail "client certificate from another CA" UNAVAILABLE --ca "$C/ca.pem" \
  --cert "$O/client.pem" --key "$O/client-key.pem" --api-key "$KEY_ALL"

step "b. API keys"
expect_fail "no key" UNAUTHENTICATED "${MTLS[@]}"
expect_fail "wrong key" UNAUTHENTICATED "${MTLS[@]}" --api-key "$KEY_BATCH-x"
expect_fail "key outside its tiers" PERMISSION_DENIED "${MTLS[@]}" --api-key "$KEY_BATCH" \
  --tier interactive
rr "$work/out" "${MTLS[@]}" --api-key "$KEY_ALL" --json || fail "the right key: $(cat "$work/out")"
n=$($PY -c 'import json,sys; t=open(sys.argv[1]).read(); print(len(json.loads(t[t.index("{"):t.rindex("}")+1])["results"]))' "$work/out") ||
  fail "unreadable ranking: $(cat "$work/out")"
[ "$n" -eq 4 ] || fail "the right key: $n results, expected all 4"
echo "ok: the right key gets a full ranking (4 results)"
rr "$work/out" "${MTLS[@]}" --api-key "$KEY_BATCH" --tier batch || fail "batch key, batch tier: $(cat "$work/out")"
echo "ok: the batch key may use tier batch"
out=$(timeout 30 "$MRANK" health --addr "$ADDR" "${MTLS[@]}" 2>&1) || fail "health without a key: $out"
[ "$out" = SERVING ] || fail "health without a key: $out"
echo "ok: grpc.health.v1 answers without a key"
out=$(timeout 30 "$MRANK" health --info --addr "$ADDR" "${MTLS[@]}" 2>&1) && fail "Info without a key answered: $out"
echo "$out" | grep -q UNAUTHENTICATED || fail "Info without a key: $out"
out=$(MRANK_API_KEY=$KEY_ALL timeout 30 "$MRANK" health --info --addr "$ADDR" "${MTLS[@]}" 2>&1) ||
  fail "Info with a key: $out"
echo "ok: Ranker/Info needs a key"
metrics=$(curl -s --max-time 10 "http://127.0.0.1:$PM/metrics") || fail "no coordinator metrics"
echo "$metrics" | grep -q 'mrank_coord_auth_requests_total{key="team-batch",result="permission_denied"} 1' ||
  fail "per-key metrics: $(echo "$metrics" | grep auth)"
echo "$metrics" | grep -q 'mrank_coord_auth_unauthenticated_total [1-9]' || fail "no unauthenticated count"
if grep -qF -e "$KEY_ALL" -e "$KEY_BATCH" "$work/up.log" "$work/up.out" ||
  grep -qF -e "$KEY_ALL" -e "$KEY_BATCH" <<<"$metrics"; then
  fail "an API key shows in the logs or the metrics"
fi
echo "ok: metrics per key name; no key in logs or metrics"

step "b2. the Python and Go clients speak TLS and send keys"
out=$(timeout 60 $PY tests/clients/rerank_client.py rerank "$ADDR" --ca "$C/ca.pem" \
  --cert "$C/client.pem" --key "$C/client-key.pem" --api-key "$KEY_ALL" --query q \
  --docs "$work/docs.txt" --timeout 20 2>&1) || fail "python client: $out"
echo "$out" | grep -q '"results"' || fail "python client: $out"
rc=0; out=$(timeout 60 $PY tests/clients/rerank_client.py rerank "$ADDR" --ca "$C/ca.pem" \
  --cert "$C/client.pem" --key "$C/client-key.pem" --query q --docs "$work/docs.txt" 2>&1) || rc=$?
[ "$rc" -eq 3 ] && echo "$out" | grep -q UNAUTHENTICATED || fail "python client without a key: $out"
echo "ok: python client"
rc=0; timeout 300 bash tests/clients/go/build.sh "$work/goclient" >"$work/gobuild.log" 2>&1 || rc=$?
if [ "$rc" -eq 2 ]; then
  echo "note: Go not installed: the Go client's check is left out"
else
  [ "$rc" -eq 0 ] || fail "Go client build: $(cat "$work/gobuild.log")"
  out=$(timeout 60 "$work/goclient" -addr "$ADDR" -ca "$C/ca.pem" -cert "$C/client.pem" \
    -key "$C/client-key.pem" -api-key "$KEY_BATCH" -tier batch -query q -docs "$work/docs.txt" 2>&1) ||
    fail "go client: $out"
  echo "$out" | grep -q '"results"' || fail "go client: $out"
  echo "ok: go client"
fi

step "b3. the HTTP/JSON port: HTTPS with the same certificate, client certificates, keys"
H=$(sed -n 's/^http: //p' "$work/up.out")
case "$H" in https://127.0.0.1:*) ;; *) fail "mrank up's http line: '$H' (expected https://127.0.0.1:PORT)" ;; esac
BODY='{"query": "what is the capital of France?", "documents": ["Paris is in France.", "Berlin"]}'
# hcurl WHAT STATUS [curl args...]: a POST /v2/rerank answered with HTTP STATUS
hcurl() {
  local what=$1 want=$2 code
  shift 2
  code=$(curl -s -o "$work/h.out" -w '%{http_code}' --max-time 60 -H "Content-Type: application/json" \
    -d "$BODY" "$@" "$H/v2/rerank") || true
  [ "$code" = "$want" ] || fail "https $what: HTTP $code (expected $want): $(cat "$work/h.out" 2>/dev/null)"
  echo "ok: https $what -> $want"
}
HMTLS=(--cacert "$C/ca.pem" --cert "$C/client.pem" --key "$C/client-key.pem")
hcurl "client certificate and key" 200 "${HMTLS[@]}" -H "Authorization: Bearer $KEY_ALL"
grep -q '"relevance_score"' "$work/h.out" || fail "https: $(cat "$work/h.out")"
hcurl "no client certificate" 401 --cacert "$C/ca.pem" -H "Authorization: Bearer $KEY_ALL"
hcurl "another CA's client certificate" 401 --cacert "$C/ca.pem" --cert "$O/client.pem" \
  --key "$O/client-key.pem" -H "Authorization: Bearer $KEY_ALL"
hcurl "no key" 401 "${HMTLS[@]}"
hcurl "key outside its tiers" 403 "${HMTLS[@]}" -H "Authorization: Bearer $KEY_BATCH"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 20 -d "$BODY" "http${H#https}/v2/rerank") || true
[ "$code" != 200 ] || fail "plaintext HTTP answered on the HTTPS port"
echo "ok: plaintext HTTP refused on the HTTPS port"

step "c. worker ports accept only the internal CA's certificates"
for port in "$PW1" "$PW2"; do
  wk=(--addr "127.0.0.1:$port" --query q --docs "$work/docs.txt" --timeout-ms 5000)
  rc=0; timeout 30 "$MRANK" rerank "${wk[@]}" >"$work/out" 2>&1 || rc=$?
  [ "$rc" -ne 0 ] && grep -q UNAVAILABLE "$work/out" || fail "worker $port plaintext: $(cat "$work/out")"
  rc=0; timeout 30 "$MRANK" rerank "${wk[@]}" --ca "$C/internal-ca.pem" --cert "$C/client.pem" \
    --key "$C/client-key.pem" >"$work/out" 2>&1 || rc=$?
  [ "$rc" -ne 0 ] && grep -q UNAVAILABLE "$work/out" || fail "worker $port public client cert: $(cat "$work/out")"
  rc=0; timeout 30 "$MRANK" rerank "${wk[@]}" --ca "$C/internal-ca.pem" --cert "$O/internal.pem" \
    --key "$O/internal-key.pem" >"$work/out" 2>&1 || rc=$?
  [ "$rc" -ne 0 ] && grep -q UNAVAILABLE "$work/out" || fail "worker $port other CA's cert: $(cat "$work/out")"
  rc=0; timeout 30 "$MRANK" rerank "${wk[@]}" --ca "$C/internal-ca.pem" --cert "$C/internal.pem" \
    --key "$C/internal-key.pem" >"$work/out" 2>&1 || rc=$?
  grep -q UNIMPLEMENTED "$work/out" || fail "worker $port internal cert did not get through: $(cat "$work/out")"
  echo "ok: worker $port refuses plaintext, the public client cert and another CA's cert"
done

step "d. no listener on a wildcard address"
pids=$(pgrep -P "$uppid" || true)
[ "$(echo "$pids" | wc -w)" -eq 3 ] || fail "expected 3 children of mrank up, got: $pids"
ss -Hltnp >"$work/ss.txt"
nl=0
for p in $pids; do
  while read -r local; do
    nl=$((nl + 1))
    case $local in
      0.0.0.0:* | '*:'* | '[::]:'* | '[::ffff:0.0.0.0]:'*) fail "pid $p listens on $local" ;;
    esac
  done < <(grep "pid=$p," "$work/ss.txt" | awk '{print $4}')
done
[ "$nl" -ge 6 ] || fail "expected at least 6 listeners (3 gRPC + 3 metrics), saw $nl: $(cat "$work/ss.txt")"
echo "ok: $nl listeners, none on a wildcard address"

step "e. an invalid request's error carries no worker address"
$PY -c 'print(" ".join(["word"] * 3000))' >"$work/long.txt"
cat "$work/docs.txt" >>"$work/long.txt"
rc=0
timeout 60 "$MRANK" rerank --addr "$ADDR" "${MTLS[@]}" --api-key "$KEY_ALL" --query q \
  --docs "$work/long.txt" --no-truncate --timeout-ms 20000 >"$work/out" 2>&1 || rc=$?
[ "$rc" -eq 3 ] || fail "long passage with --no-truncate: exit $rc (expected 3): $(cat "$work/out")"
grep -q "INVALID_ARGUMENT" "$work/out" || fail "expected INVALID_ARGUMENT: $(cat "$work/out")"
if grep -qE "127\.0\.0\.1|:($PW1|$PW2)\b" "$work/out"; then fail "worker address in: $(cat "$work/out")"; fi
grep -q "stage '" "$work/out" || fail "the error names no stage: $(cat "$work/out")"
echo "ok: $(cat "$work/out")"

step "f. rotation under load"
subject() {
  timeout 10 openssl s_client -connect "$ADDR" -servername localhost -alpn h2 -CAfile "$C/ca.pem" \
    -cert "$C/client.pem" -key "$C/client-key.pem" </dev/null 2>/dev/null |
    openssl x509 -noout -subject 2>/dev/null || true
}
echo "$(subject)" | grep -q "mrank coordinator" || fail "served subject before rotation: $(subject)"
hsubject() {   # the HTTPS port's certificate (HTTP/1.1, no ALPN)
  timeout 10 openssl s_client -connect "${H#https://}" -servername localhost -CAfile "$C/ca.pem" \
    -cert "$C/client.pem" -key "$C/client-key.pem" </dev/null 2>/dev/null |
    openssl x509 -noout -subject 2>/dev/null || true
}
echo "$(hsubject)" | grep -q "mrank coordinator" || fail "HTTPS subject before rotation: $(hsubject)"
# the new certificate: same CA, another name
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=mrank rotated" \
  -keyout "$work/new-key.pem" -out "$work/new.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$work/ext"
openssl x509 -req -in "$work/new.csr" -CA "$C/ca.pem" -CAkey "$C/ca-key.pem" -CAcreateserial \
  -days 2 -extfile "$work/ext" -out "$work/new.pem" 2>/dev/null
(
  ok=0
  for i in $(seq 1 16); do
    if rr "$work/load.$i" "${MTLS[@]}" --api-key "$KEY_ALL"; then ok=$((ok + 1)); fi
  done
  echo "$ok" >"$work/load.ok"
) &
loadpid=$!
sleep 2
cp "$work/new.pem" "$work/live/.new.pem"
cp "$work/new-key.pem" "$work/live/.new-key.pem"
mv "$work/live/.new.pem" "$work/live/server.pem"   # a moment with a mismatched pair: kept old
sleep 0.3
mv "$work/live/.new-key.pem" "$work/live/server-key.pem"
wait "$loadpid"
ok=$(cat "$work/load.ok")
[ "$ok" -eq 16 ] || { cat "$work"/load.* >&2; fail "only $ok of 16 requests succeeded across the rotation"; }
echo "ok: 16 of 16 requests answered across the rotation"
seen=
for _ in $(seq 1 20); do
  seen=$(subject)
  echo "$seen" | grep -q "mrank rotated" && break
  sleep 0.5
done
echo "$seen" | grep -q "mrank rotated" || fail "new connections still see: $seen"
grep -q "certificate files changed: reloaded" "$work/up.log" || fail "no reload in the log"
rr "$work/out" "${MTLS[@]}" --api-key "$KEY_ALL" || fail "after rotation: $(cat "$work/out")"
echo "ok: new connections get the rotated certificate; requests still answered"
hseen=
for _ in $(seq 1 20); do
  hseen=$(hsubject)
  echo "$hseen" | grep -q "mrank rotated" && break
  sleep 0.5
done
echo "$hseen" | grep -q "mrank rotated" || fail "new HTTPS connections still see: $hseen"
echo "ok: the HTTPS port serves the rotated certificate too, without a restart"

step "g. bad files are refused at start, naming the file and field"
$PY - "$work" <<'PYEOF'
import json, sys
w = sys.argv[1]
c = json.load(open(w + "/up.json"))
c["coordinator"]["listen"] = "127.0.0.1:0"
c["coordinator"]["metrics_port"] = 0
c["security"]["tls"]["cert"] = w + "/missing.pem"
json.dump(c, open(w + "/bad1.json", "w"))
c = json.load(open(w + "/up.json"))
c["coordinator"]["listen"] = "127.0.0.1:0"
c["coordinator"]["metrics_port"] = 0
c["security"]["api_keys"] = w + "/badkeys.json"
json.dump(c, open(w + "/bad2.json", "w"))
open(w + "/badkeys.json", "w").write('[{"name": "x", "sha256": "abc", "tiers": ["batch"]}]')
PYEOF
rc=0; out=$(timeout 30 "$MRANK" coordinator --config "$work/bad1.json" --check 2>&1) || rc=$?
[ "$rc" -ne 0 ] && echo "$out" | grep -q "security.tls.cert" && echo "$out" | grep -q missing.pem ||
  fail "missing certificate: exit $rc: $out"
echo "ok: $out"
rc=0; out=$(timeout 30 "$MRANK" coordinator --config "$work/bad2.json" 2>&1) || rc=$?
[ "$rc" -ne 0 ] && echo "$out" | grep -q "badkeys.json: \[0\].sha256" || fail "bad key file: exit $rc: $out"
echo "ok: $(echo "$out" | tail -1)"

step "stop"
kill -INT "$uppid"
for _ in $(seq 1 60); do kill -0 "$uppid" 2>/dev/null || break; sleep 1; done
if kill -0 "$uppid" 2>/dev/null; then fail "mrank up still running 60 s after SIGINT"; fi
wait "$uppid" || fail "mrank up exited with status $?"
uppid=
if grep -q "Sanitizer" "$work/up.log"; then fail "a sanitizer report in the cluster's log"; fi
echo "PASS: security"
