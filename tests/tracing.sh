#!/usr/bin/env bash
# tracing.sh: W3C trace context through the cascade and OTLP/HTTP JSON export, against a
# tiny local collector (Python http.server recording every POST /v1/traces). A client sends a
# Rerank with a traceparent; the coordinator (coordinator.otlp_endpoint in its config) and the
# worker (--otlp-endpoint) export spans that must form one trace with the client's trace id:
#   client span -> SERVER /mrank.v1.Ranker/Rerank -> INTERNAL "stage full" -> CLIENT
#   /mrank.v1.Worker/Score -> SERVER /mrank.v1.Worker/Score (the worker's), each hop a new
#   span id; the client's tracestate is carried along. A malformed traceparent starts a new
#   trace instead. The same over HTTP: POST /v2/rerank with a traceparent header gets a SERVER
#   span "POST /v2/rerank" under the client's span, and the stage span under it.
# Usage: bash tests/tracing.sh path/to/mrank   (from the repo root)
set -euo pipefail
MRANK=$(readlink -f "${1:?usage: tracing.sh path/to/mrank}")
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
. tests/lib/harness.bash
mr_harness trace

# the collector: appends each POSTed body as one line to spans.jsonl, answers 200 {}
$PY - "$work" >"$work/collector.log" 2>&1 <<'PYEOF' &
import http.server, json, sys
out = sys.argv[1] + "/spans.jsonl"
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        ok = self.path == "/v1/traces" and self.headers.get("Content-Type") == "application/json"
        if ok:
            with open(out, "a") as f:
                f.write(json.dumps(json.loads(body)) + "\n")
        self.send_response(200 if ok else 400)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
open(sys.argv[1] + "/collector.port", "w").write(str(s.server_address[1]))
s.serve_forever()
PYEOF
pids+=($!)
for _ in $(seq 100); do [ -s "$work/collector.port" ] && break; sleep 0.1; done
OTLP="http://127.0.0.1:$(cat "$work/collector.port")/v1/traces"

mr_ports 8
PH=$P2
mr_tiny_model
mr_tiny_config one '"metrics_port": 0, "otlp_endpoint": "'"$OTLP"'", "http_listen": "127.0.0.1:'"$PH"'"'
mr_start_worker --otlp-endpoint "$OTLP"
mr_start_coordinator
mr_wait_serving

TRACE=4bf92f3577b34da6a3ce929d0e0e4736
PARENT=00f067aa0ba902b7
protoc --python_out="$work" -Iproto mrank.proto
$PY - "$work" 127.0.0.1:$PC "00-$TRACE-$PARENT-01" <<'PYEOF' || fail "Rerank with traceparent"
import sys
sys.path.insert(0, sys.argv[1])
import grpc, mrank_pb2
ch = grpc.insecure_channel(sys.argv[2])
call = ch.unary_unary("/mrank.v1.Ranker/Rerank", request_serializer=lambda m: m.SerializeToString(),
                      response_deserializer=mrank_pb2.RerankResponse.FromString)
req = mrank_pb2.RerankRequest(query="what is a fox", request_id="trace-test-1")
req.documents.add(text="a fox is a small mammal")
req.documents.add(text="paris is in france")
call(req, timeout=60, metadata=[("traceparent", sys.argv[3]), ("tracestate", "vendor=abc")])
req.request_id = "trace-test-2"
call(req, timeout=60, metadata=[("traceparent", "00-zz-not-a-trace")])
PYEOF
HTRACE=0af7651916cd43dd8448eb211c80319c
HPARENT=b7ad6b7169203331
$PY - "$PH" "00-$HTRACE-$HPARENT-01" <<'PYEOF' || fail "HTTP rerank with traceparent"
import http.client, json, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=60)
c.request("POST", "/v2/rerank", json.dumps({"query": "what is a fox",
          "documents": ["a fox is a small mammal", "paris is in france"]}),
          {"Content-Type": "application/json", "traceparent": sys.argv[2]})
r = c.getresponse()
assert r.status == 200, (r.status, r.read())
PYEOF
# the exporters send within ~0.5 s; SIGTERM flushes what is left
kill -TERM "$cpid"; wait "$cpid" || fail "coordinator exit $?"
kill -TERM "$wpid"; wait "$wpid" || fail "worker exit $?"
$PY - "$work/spans.jsonl" "$TRACE" "$PARENT" "$HTRACE" "$HPARENT" <<'PYEOF' || fail "spans: $(head -c 3000 "$work/spans.jsonl")"
import json, sys
path, trace, parent = sys.argv[1:4]
spans = []
for line in open(path):
    for rs in json.loads(line)["resourceSpans"]:
        svc = {a["key"]: a["value"]["stringValue"] for a in rs["resource"]["attributes"]}["service.name"]
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                s["service"] = svc
                spans.append(s)
mine = [s for s in spans if s["traceId"] == trace]
def one(name, service, kind):
    got = [s for s in mine if s["name"] == name and s["service"] == service and s["kind"] == kind]
    assert len(got) == 1, f"{name} {service}: {len(got)} spans in {[(s['name'], s['service']) for s in mine]}"
    return got[0]
rerank = one("/mrank.v1.Ranker/Rerank", "mrank-coordinator", 2)
stage = one("stage full", "mrank-coordinator", 1)
call = one("/mrank.v1.Worker/Score", "mrank-coordinator", 3)
score = one("/mrank.v1.Worker/Score", "mrank-worker", 2)
assert rerank["parentSpanId"] == parent, rerank
assert stage["parentSpanId"] == rerank["spanId"], (stage, rerank)
assert call["parentSpanId"] == stage["spanId"], (call, stage)
assert score["parentSpanId"] == call["spanId"], (score, call)
ids = [s["spanId"] for s in (rerank, stage, call, score)] + [parent]
assert len(set(ids)) == 5, ids       # a new span id per hop
assert all(len(i) == 16 for i in ids)
assert score.get("traceState") == "vendor=abc", score
for s in (rerank, stage, call, score):
    assert int(s["startTimeUnixNano"]) <= int(s["endTimeUnixNano"]), s
    assert s["status"]["code"] == 1, s
# the malformed traceparent: a Rerank span of another trace, with no parent
others = [s for s in spans if s["traceId"] != trace and s["name"] == "/mrank.v1.Ranker/Rerank"]
assert others and "parentSpanId" not in others[0], others
# HTTP: the request's span under the client's, the stage under it
htrace, hparent = sys.argv[4:6]
hs = [s for s in spans if s["traceId"] == htrace]
hreq = [s for s in hs if s["name"] == "POST /v2/rerank" and s["kind"] == 2]
hstage = [s for s in hs if s["name"] == "stage full" and s["kind"] == 1]
assert len(hreq) == 1 and hreq[0]["parentSpanId"] == hparent, hs
assert len(hstage) == 1 and hstage[0]["parentSpanId"] == hreq[0]["spanId"], hs
print(f"ok: HTTP {hparent} -> POST /v2/rerank {hreq[0]['spanId']} -> stage {hstage[0]['spanId']}")
print(f"ok: {len(spans)} spans; client {parent} -> Rerank {rerank['spanId']} -> stage "
      f"{stage['spanId']} -> Score call {call['spanId']} -> worker Score {score['spanId']}")
PYEOF
echo PASS
