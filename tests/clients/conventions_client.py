#!/usr/bin/python3
"""conventions_client.py: a Python gRPC client (Debian python3-grpcio) of the protocol
conventions every gRPC server is expected to speak, for tests/protocol_conventions.sh:
grpc.health.v1 Health/Watch and gRPC server reflection (grpc.reflection.v1 and v1alpha).

Message classes are generated at run time with protoc --python_out from Debian's grpc-proto
files; calls go through grpc's generic channel.unary_stream / stream_stream.

  conventions_client.py watch ADDR SERVICE OUT [--cancel-after N] [--timeout S]
      Health/Watch: appends one line per status received to OUT (SERVING, NOT_SERVING,
      SERVICE_UNKNOWN), then "END CODE" when the server ends the stream, or "CANCELLED" after
      cancelling the call itself once N statuses arrived.
  conventions_client.py reflect ADDR [--version v1|v1alpha]
      ServerReflectionInfo on one stream: list_services, then file_containing_symbol for each
      service and file_by_filename for the file named; prints JSON {"services": [...],
      "methods": {"pkg.Service": ["Method (In) returns (stream? Out)", ...]}, "files": [...],
      "unknown_symbol": CODE} built from the returned FileDescriptorProtos with
      google.protobuf's descriptor_pool (what grpcurl describe does).
"""
import argparse
import atexit
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool

PROTO_DIR = "/usr/share/grpc-proto"


def load(rel):
    """The generated module of PROTO_DIR/rel (loaded by path: grpc/... would be shadowed by
    the grpc package)."""
    out = tempfile.mkdtemp(prefix="mr_conv_pb2_")
    atexit.register(shutil.rmtree, out, True)
    subprocess.run(["protoc", f"--python_out={out}", f"-I{PROTO_DIR}", rel], check=True)
    path = os.path.join(out, rel.replace(".proto", "_pb2.py"))
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3] + str(id(out)),
                                                  path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def watch(a):
    h = load("grpc/health/v1/health.proto")
    names = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
    ch = grpc.insecure_channel(a.addr)
    call = ch.unary_stream("/grpc.health.v1.Health/Watch",
                           request_serializer=lambda m: m.SerializeToString(),
                           response_deserializer=h.HealthCheckResponse.FromString)(
        h.HealthCheckRequest(service=a.service), timeout=a.timeout)
    n = 0
    with open(a.out, "a", buffering=1) as f:
        try:
            for resp in call:
                f.write(names.get(resp.status, str(resp.status)) + "\n")
                n += 1
                if a.cancel_after and n >= a.cancel_after:
                    call.cancel()
                    f.write("CANCELLED\n")
                    return 0
            f.write("END OK\n")
        except grpc.RpcError as e:
            f.write(f"END {e.code().name}\n")
    return 0


def describe(files):
    """{"pkg.Service": ["Method (In) returns (Out)", ...]} from serialized FileDescriptorProtos
    (dependencies included, any order)."""
    protos = {}
    for raw in files:
        fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
        protos[fd.name] = fd
    pool = descriptor_pool.DescriptorPool()
    added = set()

    def add(name):
        if name in added:
            return
        for dep in protos[name].dependency:
            add(dep)
        pool.Add(protos[name])
        added.add(name)

    for name in protos:
        add(name)
    out = {}
    for name in protos:
        fdesc = pool.FindFileByName(name)
        for sname, svc in fdesc.services_by_name.items():
            out[svc.full_name] = [
                f"{m.name} ({'stream ' if getattr(m, 'client_streaming', False) else ''}"
                f"{m.input_type.full_name}) returns "
                f"({'stream ' if getattr(m, 'server_streaming', False) else ''}"
                f"{m.output_type.full_name})" for m in svc.methods]
    return out


def reflect(a):
    r = load(f"grpc/reflection/{a.version}/reflection.proto")
    ch = grpc.insecure_channel(a.addr)
    stub = ch.stream_stream(f"/grpc.reflection.{a.version}.ServerReflection/ServerReflectionInfo",
                            request_serializer=lambda m: m.SerializeToString(),
                            response_deserializer=r.ServerReflectionResponse.FromString)

    def one(**kw):
        """One request and its response on a fresh stream."""
        return next(iter(stub(iter([r.ServerReflectionRequest(**kw)]), timeout=a.timeout)))

    # several requests on one stream, as grpcurl sends them
    reqs = [r.ServerReflectionRequest(list_services="")]
    listed = next(iter(stub(iter(reqs), timeout=a.timeout)))
    services = [s.name for s in listed.list_services_response.service]
    asks = [r.ServerReflectionRequest(file_containing_symbol=s) for s in services]
    files, names = [], []
    for resp in stub(iter(asks), timeout=a.timeout):
        if resp.HasField("error_response"):
            continue
        for raw in resp.file_descriptor_response.file_descriptor_proto:
            files.append(raw)
            names.append(descriptor_pb2.FileDescriptorProto.FromString(raw).name)
    by_name = one(file_by_filename="mrank.proto")
    by_name_files = [descriptor_pb2.FileDescriptorProto.FromString(x).name
                     for x in by_name.file_descriptor_response.file_descriptor_proto]
    unknown = one(file_containing_symbol="no.such.Symbol")
    print(json.dumps({"services": services, "methods": describe(files),
                      "files": sorted(set(names)), "by_filename": by_name_files,
                      "unknown_symbol": unknown.error_response.error_code}))
    return 0


def silent(a):
    """A reflection stream that asks once and then stays open without a word, until the server
    ends it: prints OPEN after the first answer, then END and the status code."""
    r = load(f"grpc/reflection/{a.version}/reflection.proto")
    ch = grpc.insecure_channel(a.addr)
    stub = ch.stream_stream(f"/grpc.reflection.{a.version}.ServerReflection/ServerReflectionInfo",
                            request_serializer=lambda m: m.SerializeToString(),
                            response_deserializer=r.ServerReflectionResponse.FromString)
    done = threading.Event()

    def reqs():
        yield r.ServerReflectionRequest(list_services="")
        done.wait(a.timeout)

    it = stub(reqs(), timeout=a.timeout)
    next(it)
    print("OPEN", flush=True)
    try:
        for _ in it:
            pass
        print("END OK", flush=True)
    except grpc.RpcError as e:
        print("END", e.code().name, flush=True)
    done.set()
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("watch")
    w.add_argument("addr")
    w.add_argument("service")
    w.add_argument("out")
    w.add_argument("--cancel-after", type=int, default=0)
    w.add_argument("--timeout", type=float, default=120)
    f = sub.add_parser("reflect")
    f.add_argument("addr")
    f.add_argument("--version", default="v1", choices=["v1", "v1alpha"])
    f.add_argument("--timeout", type=float, default=30)
    q = sub.add_parser("silent")
    q.add_argument("addr")
    q.add_argument("--version", default="v1", choices=["v1", "v1alpha"])
    q.add_argument("--timeout", type=float, default=120)
    a = p.parse_args()
    return {"watch": watch, "reflect": reflect, "silent": silent}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
