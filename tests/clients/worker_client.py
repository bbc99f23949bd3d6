#!/usr/bin/python3
"""worker_client.py: a Python gRPC client of mrank.v1.Worker, for tests (Debian python3-grpcio).

Message classes are generated at run time with protoc --python_out into a temp dir (from
proto/mrank.proto and grpc-proto's health.proto); calls go through grpc's generic
channel.unary_unary, so no grpc_tools is needed.

  worker_client.py wait ADDR [TIMEOUT_S]          poll health until SERVING (exit 1 on timeout)
  worker_client.py health ADDR [SERVICE]          print SERVING / NOT_SERVING / the error code
  worker_client.py info ADDR                      WorkerInfoResponse as JSON
  worker_client.py score ADDR --query Q --passage P [--passage P]... [--exits 1,2]
        [--ratio R] [--compress-layers 1,2] [--pooling mean] [--adapter NAME]...
        [--max-len N] [--truncate none] [--prune L:top=K|L:min=T]... [--timeout S]
      prints {"exits":[...],"results":[{"index","scores","depth","tokens","truncated"}],...}
      or, on a non-OK status, {"code":"INVALID_ARGUMENT","message":"..."} and exits 3.
  worker_client.py multi ADDR FILE                FILE: a JSON list of score argument lists;
      prints one result line per entry (one process start for many calls)
"""
import argparse
import atexit
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
HEALTH_DIR = "/usr/share/grpc-proto"


def unary(channel, method, req, resp_cls, timeout):
    fn = channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString(),
                             response_deserializer=resp_cls.FromString)
    return fn(req, timeout=timeout)


def health(channel, health_pb2, service, timeout=2.0):
    r = unary(channel, "/grpc.health.v1.Health/Check",
              health_pb2.HealthCheckRequest(service=service),
              health_pb2.HealthCheckResponse, timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)


def ints(s):
    return [int(x) for x in s.split(",") if x]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["wait", "health", "info", "score", "multi"])
    ap.add_argument("addr")
    ap.add_argument("extra", nargs="?")
    ap.add_argument("--query")
    ap.add_argument("--passage", action="append", default=[])
    ap.add_argument("--exits", default="")
    ap.add_argument("--ratio", type=int, default=0)
    ap.add_argument("--compress-layers", default="")
    ap.add_argument("--pooling", default="")
    ap.add_argument("--adapter", action="append", default=[])
    ap.add_argument("--depth", type=int, default=0)
    ap.add_argument("--max-len", type=int, default=0)
    ap.add_argument("--truncate", choices=["end", "none"], default="end")
    ap.add_argument("--prune", action="append", default=[])
    ap.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args()

    # the protobuf-generated health module would collide with grpc's package name: import the
    # generated file by path instead
    out = tempfile.mkdtemp(prefix="mrank_pb_")
    atexit.register(shutil.rmtree, out, True)
    subprocess.run(["protoc", f"--python_out={out}", f"-I{REPO}/proto", "mrank.proto"], check=True)
    subprocess.run(["protoc", f"--python_out={out}", f"-I{HEALTH_DIR}",
                    "grpc/health/v1/health.proto"], check=True)
    sys.path.insert(0, out)
    import mrank_pb2
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "health_pb2", os.path.join(out, "grpc/health/v1/health_pb2.py"))
    health_pb2 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(health_pb2)

    ch = grpc.insecure_channel(a.addr)
    try:
        if a.cmd == "wait":
            import time
            until = time.time() + float(a.extra or 20)
            while time.time() < until:
                try:
                    if health(ch, health_pb2, "") == "SERVING":
                        print("SERVING")
                        return 0
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
            print("timeout waiting for SERVING", file=sys.stderr)
            return 1
        if a.cmd == "health":
            try:
                print(health(ch, health_pb2, a.extra or ""))
            except grpc.RpcError as e:
                print(e.code().name)
            return 0
        if a.cmd == "info":
            from google.protobuf.json_format import MessageToDict
            r = unary(ch, "/mrank.v1.Worker/Info", mrank_pb2.WorkerInfoRequest(),
                      mrank_pb2.WorkerInfoResponse, a.timeout)
            print(json.dumps(MessageToDict(r, preserving_proto_field_name=True)))
            return 0
        if a.cmd == "multi":
            rc = 0
            for argv in json.load(open(a.extra)):
                sub = ap.parse_args(["score", a.addr] + argv)
                rc = max(rc, score(ch, mrank_pb2, sub))
            return rc
        return score(ch, mrank_pb2, a)
    finally:
        ch.close()


def score(ch, mrank_pb2, a):
    req = mrank_pb2.ScoreRequest(query=a.query or "", passages=a.passage,
                                 exits=ints(a.exits), max_len=a.max_len,
                                 truncate=mrank_pb2.TRUNCATE_NONE if a.truncate == "none"
                                 else mrank_pb2.TRUNCATE_END)
    req.arch.depth = a.depth
    req.arch.compress_ratio = a.ratio
    req.arch.compress_layers.extend(ints(a.compress_layers))
    req.arch.pooling = a.pooling
    req.arch.adapters.extend(a.adapter)
    for p in a.prune:
        layer, rest = p.split(":")
        kind, val = rest.split("=")
        step = req.prune.add(layer=int(layer))
        if kind == "top":
            step.top_k = int(val)
        else:
            step.has_min_score = True
            step.min_score = float(val)
    try:
        r = unary(ch, "/mrank.v1.Worker/Score", req, mrank_pb2.ScoreResponse, a.timeout)
    except grpc.RpcError as e:
        print(json.dumps({"code": e.code().name, "message": e.details()}))
        sys.stdout.flush()
        return 3
    res = []
    for i, p in enumerate(r.passages):
        res.append({"index": i, "scores": [None if math.isnan(s) else s for s in p.scores],
                    "depth": p.depth, "tokens": p.tokens, "truncated": p.truncated})
    print(json.dumps({"exits": list(r.exits), "results": res, "queue_ms": r.queue_ms,
                      "compute_ms": r.compute_ms, "batch_tokens": r.batch_tokens}))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
