#!/usr/bin/env bash
# http_api.sh: the coordinator's HTTP/JSON front end (coordinator/http.c), with Python's
# http.client and curl, against a local `mrank up` cluster (tests/clients/http_cluster.bash:
# API keys, max_inflight 2, limits.max_request_bytes 64 KiB, max_documents 200). Usage:
# bash tests/http_api.sh path/to/mrank (from the repo root). Checks:
#  a. every shape: POST /v2/rerank (Cohere v2), /v1/rerank (Cohere v1 / Jina, documents as
#     strings and {"text"}), /rerank (TEI: texts, return_text, raw_scores, truncate); top_n,
#     return_documents, mrank's profile / tier / overrides;
#  b. scores: relevance_score = min(sigmoid(a * raw + b) of its stage (models/mrank-tiny/
#     calibration.json), the score above it), non-increasing down every response, gRPC and
#     HTTP, while stages stay deeper-first; one path with gRPC: the same request over gRPC
#     (tests/clients/rerank_client.py) ranks the same documents in the same order with the
#     same scores;
#  c. errors, JSON {"message"} with the status a client expects: 400 (not JSON, missing or
#     mistyped fields, \u0000, invalid UTF-8, unknown tier, too many documents, bad timeout
#     header), 401 (no or unknown key; from the headers, before the body; WWW-Authenticate),
#     403 (key outside its tiers), 404, 405 (+ Allow), 413 (Content-Length, and a
#     chunked body with no length), 429 + Retry-After (overload), 503 (a coordinator whose
#     pools never answered), 504 (X-Request-Timeout-Ms: 1; a deadline passing in the queue is
#     never 503); a slow upload does not count against the budget or the deadline;
#  d. keep-alive (several requests on one connection), metrics counted under the tier;
#  e. `mrank calibrate` fits both stages from WordNet pairs (scripts/make_calibration_pairs.py)
#     with a positive slope and a log loss no worse than the identity.
set -euo pipefail
MRANK=$(readlink -f "$1")
cd "$(dirname "$0")/.."
. tests/clients/http_cluster.bash
$PY -c 'import json; print(json.dumps(["document number %d about the capital of a country" % i for i in range(200)]))' \
  >"$work/docs200.json"

# c. 503: a coordinator whose pools are dead, HTTP on a free port
read -r PD < <($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$MRANK" coordinator --config "$work/dead.json" --http-listen "127.0.0.1:$PD" \
  2>"$work/dead.log" &
extra_pids+=($!)
for _ in $(seq 100); do grep -q "http on port" "$work/dead.log" && break; sleep 0.1; done
grep -q "http on port $PD" "$work/dead.log" || fail "no HTTP on the dead-pool coordinator"

# c. 413 without a Content-Length (chunked): the bytes received count
head -c 70000 /dev/zero | tr '\0' 'a' | sed 's/^/{"query":"q","documents":["/; s/$/"]}/' \
  >"$work/big.json"
code=$(curl -s -o "$work/big.out" -w '%{http_code}' -H "Authorization: Bearer $KEY_ALL" \
  -H "Transfer-Encoding: chunked" -H "Content-Type: application/json" \
  --data-binary @"$work/big.json" "$H/v2/rerank")
[ "$code" = 413 ] || fail "chunked 70000-byte body: HTTP $code, not 413"
grep -q '"message"' "$work/big.out" || fail "413 without a JSON message"
# curl: a plain v2 call and the 405's Allow header
curl -sf -H "Authorization: Bearer $KEY_ALL" -H "Content-Type: application/json" \
  -d '{"query":"capital of france","documents":["paris","berlin"]}' "$H/v2/rerank" \
  >"$work/curl.json" || fail "curl v2 call"
grep -q '"relevance_score"' "$work/curl.json" || fail "curl v2: $(cat "$work/curl.json")"
curl -s -D - -o /dev/null "$H/v2/rerank" | tr -d '\r' | grep -qi '^Allow: POST' ||
  fail "405 without Allow: POST"

$PY - "$H" "$ADDR" "$KEY_ALL" "$KEY_BATCH" "$PD" "$MPORT" <<'PYEOF' || fail "http.client checks"
import http.client, json, subprocess, sys, tempfile, threading, urllib.parse, urllib.request
H, ADDR, KEY, KEY_BATCH, PD, MPORT = sys.argv[1:]
u = urllib.parse.urlparse(H)
AUTH = {"Authorization": "Bearer " + KEY, "Content-Type": "application/json"}
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
n_checks = 0

def call(path, body, headers=AUTH, method="POST", c=None, port=None):
    c = c or (http.client.HTTPConnection(u.hostname, port, timeout=60) if port else conn)
    data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
    c.request(method, path, body=data, headers=headers)
    r = c.getresponse()
    raw = r.read()
    try:
        js = json.loads(raw) if raw else None
    except ValueError:
        js = raw
    if r.getheader("Connection", "").lower() == "close":
        c.close()
    return r.status, js, r

def check(cond, what):
    global n_checks
    n_checks += 1
    if not cond:
        print("FAIL:", what, file=sys.stderr)
        sys.exit(1)

def expect(status, path, body, what, headers=AUTH, method="POST", port=None):
    st, js, r = call(path, body, headers, method, port=port)
    check(st == status, f"{what}: HTTP {st} ({js}), expected {status}")
    check(isinstance(js, dict) and isinstance(js.get("message"), str) and js["message"],
          f"{what}: no JSON message: {js}")
    print(f"ok {status} {what}: {js['message']}")
    return r

docs = ["Paris is the capital and largest city of France.", "Berlin is the capital of Germany.",
        "The Seine flows through Paris.", "Bananas are rich in potassium.",
        "France is a country in western Europe; its capital is Paris.",
        "Madrid is the capital of Spain.", "Potatoes grow underground.",
        "The Eiffel Tower stands in Paris, France."]
Q = "What is the capital of France?"

def monotone(scores, what):
    check(all(a >= b for a, b in zip(scores, scores[1:])), f"{what}: scores increase: {scores}")

# a. Cohere v2
st, v2, _ = call("/v2/rerank", {"model": "mrank", "query": Q, "documents": docs, "top_n": 5,
                                "max_tokens_per_doc": 512, "return_documents": True})
check(st == 200, f"v2: HTTP {st} {v2}")
check(set(v2) >= {"id", "results", "meta"} and len(v2["results"]) == 5, f"v2 shape: {v2}")
check(len({x["index"] for x in v2["results"]}) == 5, "v2: duplicate index")
for x in v2["results"]:
    check(x["document"]["text"] == docs[x["index"]], f"v2 document of {x['index']}")
    check(0 <= x["relevance_score"] <= 1, f"v2 score {x}")
monotone([x["relevance_score"] for x in v2["results"]], "v2")
st, v2n, _ = call("/v2/rerank", {"query": Q, "documents": docs})
check(st == 200 and len(v2n["results"]) == len(docs) and
      all("document" not in x for x in v2n["results"]), f"v2 without return_documents: {v2n}")
monotone([x["relevance_score"] for x in v2n["results"]], "v2 all")
stages = [x["stage"] for x in v2n["results"]]
check(stages == sorted(stages, reverse=True), f"v2: deeper survivors not first: {stages}")
check(len(set(stages)) == 2, f"the cascade ran one stage only: {stages}")
# v1 / Jina: strings and {"text"} mixed, return_documents, model echoed
mixed = [d if i % 2 else {"text": d} for i, d in enumerate(docs)]
st, v1, _ = call("/v1/rerank", {"model": "jina-reranker-v2", "query": Q, "documents": mixed,
                                "top_n": 3, "return_documents": True})
check(st == 200 and len(v1["results"]) == 3 and v1["model"] == "jina-reranker-v2" and
      "usage" in v1 and v1["meta"]["api_version"]["version"] == "1", f"v1 shape: {v1}")
for x in v1["results"]:
    check(x["document"] == {"text": docs[x["index"]]}, f"v1 document: {x}")
check([x["index"] for x in v1["results"]] == [x["index"] for x in v2n["results"][:3]],
      "v1 and v2 rank differently")
# TEI: an array; return_text; raw_scores are the head's logits
st, tei, _ = call("/rerank", {"query": Q, "texts": docs, "return_text": True, "truncate": True})
check(st == 200 and isinstance(tei, list) and len(tei) == len(docs), f"TEI shape: {tei}")
check([x["index"] for x in tei] == [x["index"] for x in v2n["results"]], "TEI order")
for x, y in zip(tei, v2n["results"]):
    check(x["text"] == docs[x["index"]] and abs(x["score"] - y["relevance_score"]) < 1e-6,
          f"TEI result {x} vs {y}")
st, teir, _ = call("/rerank", {"query": Q, "texts": docs, "raw_scores": True, "truncate": True})
for x, y in zip(teir, v2n["results"]):
    check("text" not in x and abs(x["score"] - y["raw_score"]) < 1e-5, f"TEI raw {x} vs {y}")
# TEI without truncate: a pair longer than max_tokens_per_pair (64) is an error, as in TEI,
# in TEI's dialect: 422 (validation) with {"error", "error_type"} beside mrank's fields; too
# many texts is TEI's 413
r = expect(422, "/rerank", {"query": Q, "texts": [" ".join(["word"] * 200)]}, "TEI, no truncate")
st, js, _ = call("/rerank", {"query": Q, "texts": [" ".join(["word"] * 200)]})
check(js.get("error_type") == "Validation" and js.get("error") == js["message"],
      f"TEI error fields: {js}")
st, js, _ = call("/rerank", {"query": Q, "texts": ["d"] * 201})
check(st == 413 and js.get("error_type") == "Validation" and "201 documents" in js["error"],
      f"TEI, 201 texts: HTTP {st} {js}")
st, js, _ = call("/v2/rerank", {"query": Q, "documents": ["d"] * 201})
check(st == 400 and "error" not in js, f"Cohere v2, 201 documents: HTTP {st} {js}")
# mrank's knobs: a profile, an override
st, one, _ = call("/v2/rerank", {"query": Q, "documents": docs, "profile": "cheap-only"})
check(st == 200 and {x["stage"] for x in one["results"]} == {0} and
      one["mrank"]["profile"] == "cheap-only", f"profile cheap-only: {one}")
monotone([x["relevance_score"] for x in one["results"]], "cheap-only")
st, ov, _ = call("/v2/rerank", {"query": Q, "documents": docs,
                                "overrides": [{"stage": 0, "keep_top_k": 1}]})
check(st == 200 and sum(x["stage"] == 1 for x in ov["results"]) == 1, f"override: {ov}")

# b. calibration (models/mrank-tiny/calibration.json, per stage) and the reporting rule:
# each score is min(sigmoid(a * raw + b) of its stage, the score above it)
import math
cal = json.load(open("models/mrank-tiny/calibration.json"))["subarchs"]
ab = {n: (e["a"], e["b"]) for e in cal.values() for n in e["stages"]}
names = ["half-r2", "full"]   # profile "neural" (deploy/local.json), the soft tier's
above = math.inf
n_clamped = 0
for x in v2n["results"]:
    a, b = ab[names[x["stage"]]]
    own = 1 / (1 + math.exp(-(a * x["raw_score"] + b)))
    want = min(own, above)
    n_clamped += own > above
    # 1e-6: float32 scores printed through double
    check(abs(x["relevance_score"] - want) < 1e-6, f"calibrated score {x}: want {want}")
    above = want
print(f"ok calibration: {len(v2n['results'])} scores, {n_clamped} held down by the rule")

# b. the same request over gRPC: same order and scores
with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump(docs, f)
g = subprocess.run([sys.executable, "tests/clients/rerank_client.py", "rerank", ADDR,
                    "--query", Q, "--docs", f.name, "--api-key", KEY], capture_output=True,
                   text=True, timeout=120)
check(g.returncode == 0, f"gRPC rerank: {g.stderr}")
gr = json.loads(g.stdout)["results"]
check([x.get("index", 0) for x in gr] == [x["index"] for x in v2n["results"]],
      "gRPC and HTTP rank differently")
for x, y in zip(gr, v2n["results"]):
    check(abs(x.get("relevance_score", 0) - y["relevance_score"]) < 1e-6, f"gRPC {x} vs {y}")
monotone([x.get("relevance_score", 0) for x in gr], "gRPC")

# c. errors
expect(400, "/v2/rerank", "{not json", "not JSON")
expect(400, "/v2/rerank", {"documents": docs}, "no query")
expect(400, "/v2/rerank", {"query": "", "documents": docs}, "empty query")
expect(400, "/v2/rerank", {"query": Q, "documents": "paris"}, "documents not an array")
expect(400, "/v2/rerank", {"query": Q, "documents": [1, 2]}, "documents of numbers")
expect(400, "/v2/rerank", {"query": Q, "documents": docs, "top_n": -1}, "negative top_n")
expect(400, "/v2/rerank", {"query": Q, "documents": docs, "return_documents": "yes"},
       "return_documents a string")
expect(400, "/v2/rerank", '{"query": "q", "documents": ["a\\u0000b"]}', "\\u0000 in a document")
expect(400, "/v2/rerank", {"query": Q, "documents": docs, "tier": "nope"}, "unknown tier")
expect(400, "/v2/rerank", {"query": Q, "documents": docs,
                           "overrides": [{"stage": 9, "keep_top_k": 1}]}, "override stage")
expect(400, "/v2/rerank", {"query": Q, "documents": ["d"] * 201}, "201 documents (limit 200)")
expect(400, "/v2/rerank", {"query": Q, "documents": docs},
       "bad timeout header", headers=dict(AUTH, **{"X-Request-Timeout-Ms": "soon"}))
expect(401, "/v2/rerank", {"query": Q, "documents": docs}, "no key",
       headers={"Content-Type": "application/json"})
expect(401, "/v2/rerank", {"query": Q, "documents": docs}, "unknown key",
       headers={"Authorization": "Bearer nope"})
expect(403, "/v2/rerank", {"query": Q, "documents": docs, "tier": "standard"},
       "key outside its tiers", headers={"Authorization": "Bearer " + KEY_BATCH})
expect(404, "/v3/rerank", {"query": Q, "documents": docs}, "unknown path")
expect(405, "/v2/rerank", None, "GET", method="GET")
expect(413, "/v2/rerank", json.dumps({"query": Q, "documents": ["x" * 70000]}),
       "Content-Length over max_request_bytes")
expect(504, "/v2/rerank", {"query": Q, "documents": docs * 20},
       "1 ms deadline", headers=dict(AUTH, **{"X-Request-Timeout-Ms": "1"}))
expect(503, "/v2/rerank", {"query": Q, "documents": docs}, "pools never ready", port=int(PD))

# c. 401 from the headers alone, with the scheme (RFC 7235): a client without a key is
# answered before it sends the body it announced (nothing is buffered for it)
import socket, time, random
s = socket.create_connection((u.hostname, u.port), timeout=10)
s.sendall(b"POST /v2/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
          b"Content-Length: 60000\r\n\r\n")
head = s.recv(65536).decode("latin-1")   # times out (fails) if the server waits for the body
s.close()
check(head.startswith("HTTP/1.1 401"), f"no key, body not sent: {head[:80]!r}")
check("www-authenticate: bearer" in head.lower(), f"401 without WWW-Authenticate: {head!r}")
print("ok 401 before the body, WWW-Authenticate: Bearer")
# c. text that is not UTF-8 is refused by name (a lexical or degraded answer echoed it back,
# which JSON cannot carry)
st, js, _ = call("/v2/rerank", b'{"query": "q", "documents": ["ok", "ab\xffcd"]}')
check(st == 400 and "documents[1] is not valid UTF-8" in js.get("message", ""),
      f"invalid UTF-8: HTTP {st} {js}")
print(f"ok 400 invalid UTF-8: {js['message']}")
# c. the clock starts once the body is in (as gRPC's, with the whole message): a body sent
# with a 1.5 s pause still gets its tier budget (standard: 1000 ms) and its 1200 ms deadline
# header. Counted from the headers, both had passed before the body was in (504 at the first
# stage); from the body, the request has all of them (its own time is tens of ms, a few
# hundred under ASan on a loaded machine; a degraded answer is still a 200)
body = json.dumps({"query": Q, "documents": docs, "tier": "standard"}).encode()
def slow_body():
    yield body[:20]
    time.sleep(1.5)
    yield body[20:]
for extra in ({}, {"X-Request-Timeout-Ms": "1200"}):
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    c.request("POST", "/v2/rerank", body=slow_body(),
              headers=dict(AUTH, **{"Content-Length": str(len(body))}, **extra))
    r = c.getresponse()
    raw = r.read()
    c.close()
    check(r.status == 200, f"slow upload {extra}: HTTP {r.status} {raw[:200]!r}")
print("ok a slow upload does not count against the budget or the deadline header")
# c. a deadline that passes while queued is a 504 (or a degraded 200), never "cancelled by the
# client" (503): 24 requests at once on max_inflight 2, deadlines 100-600 ms
res = []
def deadline_call(ms):
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    res.append(call("/v2/rerank", {"query": Q, "documents": docs * 2},
                    headers=dict(AUTH, **{"X-Request-Timeout-Ms": str(ms)}), c=c))
ts = [threading.Thread(target=deadline_call, args=(random.randint(100, 600),)) for _ in range(24)]
for t in ts: t.start()
for t in ts: t.join()
codes = sorted({r[0] for r in res})
check(set(codes) <= {200, 429, 504} and len(res) == 24, f"queued deadlines: {codes}")
print(f"ok queued deadlines end as {codes}")

# c. 429: tier "tight" (200 ms budget, max_inflight 2), 24 requests at once, each alone well
# within the budget; the queue ahead cannot all finish in time, so some are refused. Up to 3
# rounds (a fast machine may absorb one).
got = []
def one_call(out):
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    out.append(call("/v2/rerank", {"query": Q, "documents": docs * 2, "tier": "tight"}, c=c))
for _ in range(3):
    res = []
    ts = [threading.Thread(target=one_call, args=(res,)) for _ in range(24)]
    for t in ts: t.start()
    for t in ts: t.join()
    got = [r for r in res if r[0] == 429]
    if got: break
check(got, f"no 429 in 3 rounds of 24: {sorted({r[0] for r in res})}")
st, js, r = got[0]
ra = r.getheader("Retry-After")
check(ra is not None and ra.isdigit() and int(ra) >= 1, f"429 Retry-After: {ra}")
check(isinstance(js.get("message"), str) and "overload" in js["message"], f"429 message {js}")
print(f"ok 429 overload: Retry-After {ra}: {js['message']}")

# d. keep-alive: three requests on one connection
c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
call("/v2/rerank", {"query": Q, "documents": docs}, c=c)
sock = c.sock
for _ in range(2):
    st, _, _ = call("/v2/rerank", {"query": Q, "documents": docs}, c=c)
    check(st == 200 and c.sock is sock, "the connection was not kept alive")
# metrics: HTTP requests count under their tier, like gRPC's
m = urllib.request.urlopen(f"http://127.0.0.1:{MPORT}/metrics", timeout=30).read().decode()
ok = [l for l in m.splitlines() if l.startswith('mrank_coord_requests_total{tier="soft",outcome="ok"}')]
check(ok and float(ok[0].split()[-1]) >= 10, f"metrics: {ok}")
print(f"PASS: {n_checks} checks")
PYEOF

# f. a RerankStream refused at arrival (its deadline shorter than the cascade's estimate) gets
# the lexical answer computed on the rpc queue thread; a partial ranking written there waited
# for that same thread for ever and the coordinator stopped answering anything (health
# included). Deadlines of 5-80 ms from a connected channel (--warm) put some of these calls on
# that path (tier standard: lexical first, degraded answers allowed); health must answer.
for t in 0.005 0.01 0.02 0.04 0.08; do
  $PY tests/clients/rerank_client.py stream "$ADDR" --query "capital of france" --warm \
    --tier standard --docs "$work/docs200.json" --api-key "$KEY_ALL" --timeout $t \
    >/dev/null 2>&1 || true
done
"$MRANK" health --addr "$ADDR" --timeout-ms 5000 >/dev/null ||
  fail "the coordinator stopped answering health after short-deadline RerankStreams"
$PY tests/clients/rerank_client.py stream "$ADDR" --query "capital of france" \
  --docs "$work/docs200.json" --api-key "$KEY_ALL" --timeout 60 >"$work/s.jsonl" ||
  fail "RerankStream after the short ones"
tail -1 "$work/s.jsonl" | grep -q '"final": true' || fail "no final message: $(tail -c 300 "$work/s.jsonl")"
echo "ok RerankStream refused at arrival: the coordinator still answers"

# e. `mrank calibrate` against the running workers, from WordNet pairs (never shared/data/ir)
$PY scripts/make_calibration_pairs.py "$work/pairs.jsonl" --queries 60 >/dev/null ||
  fail "making pairs (Debian wordnet-base, scripts/setup.sh)"
"$MRANK" calibrate --config "$work/up.json" --pairs "$work/pairs.jsonl" --out "$work/cal.json" \
  >"$work/cal.out" || fail "mrank calibrate: $(cat "$work/cal.out")"
# pairs files it must refuse, naming the file: a label that is neither 0/1 nor true/false, and
# a NUL byte (the lines after it were dropped without a word)
printf '{"query":"q","passage":"p","label":0.4}\n' >"$work/bad1.jsonl"
printf '{"query":"q","passage":"p","label":1}\n\0{"query":"q","passage":"p","label":0}\n' \
  >"$work/bad2.jsonl"
for b in "bad1.jsonl:line 1: expected" "bad2.jsonl:a NUL byte at offset 38"; do
  if msg=$("$MRANK" calibrate --config "$work/up.json" --pairs "$work/${b%%:*}" \
      --out "$work/x.json" 2>&1); then fail "calibrate accepted ${b%%:*}"; fi
  case $msg in *"${b%%:*}: ${b#*:}"*) ;; *) fail "calibrate ${b%%:*}: $msg" ;; esac
done
$PY - "$work/cal.json" <<'PYEOF' || fail "calibration.json: $(cat "$work/cal.json")"
import json, sys
c = json.load(open(sys.argv[1]))
st = sorted(n for e in c["subarchs"].values() for n in e["stages"])
assert st == ["full", "half-r2"], st
for k, e in c["subarchs"].items():
    assert e["a"] > 0 and e["logloss_fit"] <= e["logloss_identity"], (k, e)
print("ok mrank calibrate:", {k: (round(e["a"], 3), round(e["b"], 3)) for k, e in c["subarchs"].items()})
PYEOF
echo "PASS: HTTP/JSON front end"
