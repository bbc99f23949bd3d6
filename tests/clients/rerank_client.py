#!/usr/bin/python3
"""rerank_client.py: a Python gRPC client of mrank.v1.Ranker (the coordinator), for tests and as
an example (Debian python3-grpcio + python3-protobuf; no grpc_tools needed).

Message classes are generated at run time with protoc --python_out into a temp dir from
proto/mrank.proto; calls go through grpc's generic channel.unary_unary / unary_stream.

  rerank_client.py rerank ADDR --query Q --docs FILE [--profile P] [--tier T] [--top-n N]
        [--timeout S] [--override STAGE:TOP_K]...     prints the RerankResponse as JSON, or
        {"code": "INVALID_ARGUMENT", "message": ...} and exits 3 on a non-OK status
  rerank_client.py stream ADDR --query Q --docs FILE ...   RerankStream: one JSON line per message
                                                          (--warm: connect before sending)
  rerank_client.py info ADDR                                InfoResponse as JSON
  rerank_client.py wait ADDR [--timeout S]                  polls grpc.health.v1 until SERVING
  rerank_client.py garbage ADDR                             sends bytes that are not a
        RerankRequest; prints the status code
  rerank_client.py load ADDR --query Q --docs FILE --requests N --concurrency C [--tier T]
        sends N Rerank calls from C threads; prints {"ok": n, "errors": {code: n}, ...}
FILE: one document per line, or a JSON array of strings or {"text": ..., "id": ...} objects
(JSON escapes such as \u0000 reach the server as they are).
Security (docs/security.md): --ca CA.pem (TLS), --cert C.pem --key K.pem (mTLS), --api-key KEY
(or $MRANK_API_KEY; sent as 'authorization: Bearer KEY') on every command.
"""
import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import grpc
from google.protobuf import json_format

PB2_DIR = None
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def load_pb2():
    out = tempfile.mkdtemp(prefix="mr_pb2_")
    atexit.register(shutil.rmtree, out, True)
    subprocess.run(["protoc", f"--python_out={out}", f"-I{REPO}/proto", "mrank.proto"],
                   check=True)
    subprocess.run(["protoc", f"--python_out={out}", "-I/usr/share/grpc-proto",
                    "grpc/health/v1/health.proto"], check=True)
    sys.path.insert(0, out)
    import mrank_pb2  # noqa: E402
    global PB2_DIR
    PB2_DIR = out
    return mrank_pb2


def wait_serving(ch, ser, timeout):
    # grpc/health/v1/health_pb2.py would be shadowed by the grpc package: load it by path
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "health_pb2", os.path.join(PB2_DIR, "grpc/health/v1/health_pb2.py"))
    health_pb2 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(health_pb2)
    check = ch.unary_unary("/grpc.health.v1.Health/Check", request_serializer=ser,
                           response_deserializer=health_pb2.HealthCheckResponse.FromString)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if check(health_pb2.HealthCheckRequest(service=""), timeout=1.0).status == 1:
                return True
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    return False


def read_documents(path):
    """(text, id) pairs; id is "" unless a JSON item is {"text": ..., "id": ...}."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        return [(d, "") if isinstance(d, str) else (d["text"], d.get("id", ""))
                for d in json.loads(text)]
    return [(line, "") for line in text.split("\n") if line]


def read_docs(path):
    return [t for t, _ in read_documents(path)]


def to_json(msg):
    return json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                     including_default_value_fields=True)


def build_request(pb, a):
    req = pb.RerankRequest(query=a.query, top_n=a.top_n, profile=a.profile, tier=a.tier,
                           request_id=a.request_id)
    for t, i in read_documents(a.docs):
        req.documents.add(text=t, id=i)
    for o in a.override:
        parts = o.split(":")
        req.overrides.add(stage=int(parts[0]), keep_top_k=int(parts[1]))
    return req


def fail(e):
    print(json.dumps({"code": e.code().name, "message": e.details()}))
    sys.exit(3)


def open_channel(a):
    """A plaintext channel, or TLS when --ca/--cert/--key is given; an API key goes into every
    call's metadata through an interceptor."""
    if a.ca or a.cert or a.key:
        def read(p):
            with open(p, "rb") as f:
                return f.read()
        creds = grpc.ssl_channel_credentials(
            root_certificates=read(a.ca) if a.ca else None,
            private_key=read(a.key) if a.key else None,
            certificate_chain=read(a.cert) if a.cert else None)
        ch = grpc.secure_channel(a.addr, creds)
    else:
        ch = grpc.insecure_channel(a.addr)
    if not a.api_key:
        return ch

    class Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
        def _add(self, details):
            md = list(details.metadata or []) + [("authorization", "Bearer " + a.api_key)]
            return details._replace(metadata=md) if hasattr(details, "_replace") else \
                _Details(details.method, details.timeout, md, details.credentials,
                         getattr(details, "wait_for_ready", None),
                         getattr(details, "compression", None))

        def intercept_unary_unary(self, cont, details, req):
            return cont(self._add(details), req)

        def intercept_unary_stream(self, cont, details, req):
            return cont(self._add(details), req)

    return grpc.intercept_channel(ch, Bearer())


class _Details(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = (credentials, wait_for_ready,
                                                                   compression)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["rerank", "stream", "info", "garbage", "load", "wait"])
    ap.add_argument("addr")
    ap.add_argument("--query", default="")
    ap.add_argument("--docs")
    ap.add_argument("--profile", default="")
    ap.add_argument("--tier", default="")
    ap.add_argument("--top-n", type=int, default=0)
    ap.add_argument("--request-id", default="")
    ap.add_argument("--override", action="append", default=[])
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--warm", action="store_true",
                    help="stream: connect first (an Info call), so --timeout counts from the "
                         "request's arrival rather than from connecting")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--ca", help="TLS: PEM CA that verifies the server")
    ap.add_argument("--cert", help="mTLS: client certificate (PEM), with --key")
    ap.add_argument("--key", help="mTLS: the client certificate's private key (PEM)")
    ap.add_argument("--api-key", default=os.environ.get("MRANK_API_KEY", ""),
                    help="sent as 'authorization: Bearer KEY' (default: $MRANK_API_KEY)")
    a = ap.parse_args()
    pb = load_pb2()
    ch = open_channel(a)
    ser = lambda m: m.SerializeToString()  # noqa: E731
    rerank = ch.unary_unary("/mrank.v1.Ranker/Rerank", request_serializer=ser,
                            response_deserializer=pb.RerankResponse.FromString)
    if a.cmd == "wait":
        ok = wait_serving(ch, ser, a.timeout)
        print("SERVING" if ok else "not SERVING")
        sys.exit(0 if ok else 1)
    if a.cmd == "info":
        info = ch.unary_unary("/mrank.v1.Ranker/Info", request_serializer=ser,
                              response_deserializer=pb.InfoResponse.FromString)
        try:
            print(json.dumps(to_json(info(pb.InfoRequest(), timeout=a.timeout))))
        except grpc.RpcError as e:
            fail(e)
    elif a.cmd == "rerank":
        try:
            print(json.dumps(to_json(rerank(build_request(pb, a), timeout=a.timeout))))
        except grpc.RpcError as e:
            fail(e)
    elif a.cmd == "stream":
        stream = ch.unary_stream("/mrank.v1.Ranker/RerankStream", request_serializer=ser,
                                 response_deserializer=pb.RerankResponse.FromString)
        if a.warm:
            ch.unary_unary("/mrank.v1.Ranker/Info", request_serializer=ser,
                           response_deserializer=pb.InfoResponse.FromString)(
                pb.InfoRequest(), timeout=30)
        try:
            for msg in stream(build_request(pb, a), timeout=a.timeout):
                print(json.dumps(to_json(msg)))
        except grpc.RpcError as e:
            fail(e)
    elif a.cmd == "garbage":
        raw = ch.unary_unary("/mrank.v1.Ranker/Rerank", request_serializer=lambda b: b,
                             response_deserializer=lambda b: b)
        try:
            raw(b"\xff\xff\xff\xff\x0f\x12", timeout=a.timeout)
            print("OK")
        except grpc.RpcError as e:
            print(e.code().name)
    elif a.cmd == "load":
        req = build_request(pb, a)
        lock = threading.Lock()
        stats = {"ok": 0, "errors": {}, "degraded": 0, "lat_ms": []}
        todo = list(range(a.requests))

        def worker():
            while True:
                with lock:
                    if not todo:
                        return
                    todo.pop()
                t0 = time.monotonic()
                try:
                    r = rerank(req, timeout=a.timeout)
                    with lock:
                        stats["ok"] += 1
                        stats["degraded"] += int(r.degraded)
                        stats["lat_ms"].append((time.monotonic() - t0) * 1e3)
                except grpc.RpcError as e:
                    with lock:
                        k = f"{e.code().name}: {e.details()}"
                        stats["errors"][k] = stats["errors"].get(k, 0) + 1

        threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        lat = sorted(stats.pop("lat_ms"))
        stats["wall_s"] = round(time.monotonic() - t0, 3)
        if lat:
            stats["p50_ms"] = round(lat[len(lat) // 2], 2)
            stats["p99_ms"] = round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2)
        print(json.dumps(stats))


if __name__ == "__main__":
    main()
