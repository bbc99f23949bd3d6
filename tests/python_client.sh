#!/usr/bin/env bash
# python_client.sh: the packaged Python client (clients/python) against a live cluster. The
# package is built and installed offline into a venv under the build folder (--system-site-
# packages: Debian's grpcio and protobuf; --no-build-isolation --no-deps: nothing fetched),
# which generates its protobuf module once, at build time. First, against a stand-in Ranker
# served by grpcio in the test itself: an API key on a plaintext channel is refused (argument
# or $MRANK_API_KEY, sync and asyncio) unless insecure=True, which then sends it; cert without
# key is refused; tls=True really speaks TLS; the default deadline is 30 s and timeout=
# overrides it; an answer over gRPC's default 4 MiB arrives. Then its README example runs
# against `mrank worker` + `mrank coordinator`: sync rerank and info, RerankStream (kwargs
# honoured, unknown ones a TypeError), asyncio rerank, rerank_stream and info, an API error as
# grpc.RpcError, chunking of a long document (and its validation), return_documents, truncate,
# overrides, a pickled response, and no protoc call at run time (PATH without it).
# Usage: bash tests/python_client.sh path/to/mrank   (from the repo root)
set -euo pipefail
MRANK=$(readlink -f "${1:?usage: python_client.sh path/to/mrank}")
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
BUILD=$(dirname "$MRANK")
. tests/lib/harness.bash
mr_harness pyc
MR_FAIL_TAIL=8

venv=$BUILD/pyclient-venv
rm -rf "$venv" "$work/src"
$PY -m venv --system-site-packages "$venv" || fail "python3 -m venv (Debian python3-venv)"
cp -r clients/python "$work/src"   # build a copy: the source tree stays clean
MRANK_PROTO=$PWD/proto/mrank.proto "$venv/bin/pip" install -q --no-build-isolation --no-deps \
  --no-index "$work/src" >"$work/pip.log" 2>&1 || fail "pip install: $(tail -5 "$work/pip.log")"
echo "ok: mrank-client installed into $venv"

# a stand-in Ranker (grpcio, in the test's process): what the client sends, not what mrank does
(cd "$work" && PATH="$venv/bin" "$venv/bin/python" -) <<'PYEOF' || fail "client against the stand-in server"
import asyncio, os, pickle, time
from concurrent import futures
import grpc
import mrank_client
from mrank_client import AsyncClient, Client, pb
assert pb.RerankResponse.__module__ == "mrank_client.mrank_pb2", pb.RerankResponse.__module__
seen = {}
def rerank(req, ctx):
    seen["remaining"] = ctx.time_remaining()
    seen["auth"] = dict(ctx.invocation_metadata()).get("authorization")
    if req.query == "sleep":
        time.sleep(3)
    r = pb.RerankResponse(request_id=req.request_id)
    if req.query == "big":   # 6 MiB: over gRPC's default receive limit of 4 MiB
        r.results.add(index=0, document=pb.Document(text="x" * (6 << 20)))
    return r
srv = grpc.server(futures.ThreadPoolExecutor(4))
srv.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("mrank.v1.Ranker", {
    "Rerank": grpc.unary_unary_rpc_method_handler(
        rerank, request_deserializer=pb.RerankRequest.FromString,
        response_serializer=pb.RerankResponse.SerializeToString)})])
port = srv.add_insecure_port("127.0.0.1:0")
srv.start()
addr = f"127.0.0.1:{port}"
def refused(make, what):
    try:
        make()
    except ValueError as e:
        assert "plaintext" in str(e) and "insecure=True" in str(e) and what in str(e), e
        return str(e)
    raise SystemExit(f"an API key ({what}) on a plaintext channel was accepted")
print("ok: refused:", refused(lambda: Client(addr, api_key="k1"), "api_key"))
os.environ["MRANK_API_KEY"] = "k2"
refused(lambda: Client(addr), "$MRANK_API_KEY")
async def refused_async():
    refused(lambda: AsyncClient(addr), "$MRANK_API_KEY")
asyncio.run(refused_async())
with Client(addr, insecure=True) as c:   # the opt-in sends the key from the environment
    c.rerank("q", ["d"])
    assert seen["auth"] == "Bearer k2", seen
del os.environ["MRANK_API_KEY"]
with Client(addr, api_key="k1", insecure=True) as c:
    c.rerank("q", ["d"])
    assert seen["auth"] == "Bearer k1", seen
print("ok: an API key on a plaintext channel is refused (argument or $MRANK_API_KEY, sync and "
      "asyncio); insecure=True sends it")
try:
    Client(addr, cert="c.pem")
    raise SystemExit("cert without key was accepted")
except ValueError as e:
    assert "cert and key go together" in str(e), e
with Client(addr, tls=True, api_key="k1") as c:   # TLS on: the plaintext server cannot answer
    try:
        c.rerank("q", ["d"], timeout=10)
        raise SystemExit("tls=True answered by a plaintext server")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAVAILABLE, e
print("ok: cert without key refused; tls=True speaks TLS")
with Client(addr) as c:
    c.rerank("q", ["d"])
    assert 25 < seen["remaining"] <= mrank_client.DEFAULT_TIMEOUT + 0.1, seen   # rounded up
    default = seen["remaining"]
    c.rerank("q", ["d"], timeout=5)
    assert seen["remaining"] <= 5.1, seen
    print(f"ok: default deadline: the server saw {default:.1f} s left (timeout=5: "
          f"{seen['remaining']:.1f} s)")
    r = c.rerank("big", ["d"], request_id="big")
    assert len(r.results[0].document.text) == 6 << 20, len(r.results[0].document.text)
    print("ok: a 6 MiB answer arrives (receive limit 64 MiB)")
with Client(addr, timeout=0.5) as c:
    t0 = time.monotonic()
    try:
        c.rerank("sleep", ["d"])
        raise SystemExit("a 3 s answer arrived within a 0.5 s client timeout")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e
    assert time.monotonic() - t0 < 2.5, time.monotonic() - t0
async def async_deadline():
    async with AsyncClient(addr, timeout=0.5) as c:
        try:
            await c.rerank("sleep", ["d"])
            raise SystemExit("asyncio: a 3 s answer arrived within a 0.5 s client timeout")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e
asyncio.run(async_deadline())
print("ok: Client(timeout=0.5) ends a 3 s call with DEADLINE_EXCEEDED (sync and asyncio)")
srv.stop(0)
PYEOF

mr_ports 9
mr_tiny_model
mr_tiny_config two
mr_start_worker
mr_start_coordinator
mr_wait_serving

# run from elsewhere, with no protoc on PATH: the stubs must come from the installed package
(cd "$work" && PATH="$venv/bin" "$venv/bin/python" - 127.0.0.1:$PC) <<'PYEOF' || fail "client"
import asyncio, pickle, sys
import grpc
from mrank_client import AsyncClient, Client, pb
addr = sys.argv[1]
docs = ["a fox is a small omnivorous mammal", "paris is the capital of france",
        {"text": "foxes live in forests", "id": "d3"}]
with Client(addr) as c:
    r = c.rerank("what is a fox", docs, top_n=3, request_id="py-1", timeout=60)
    assert isinstance(r, pb.RerankResponse)
    assert sorted(x.index for x in r.results) == [0, 1, 2], r
    assert r.request_id == "py-1"
    assert [x.id for x in r.results if x.index == 2] == ["d3"], r
    info = c.info(timeout=10)
    assert info.dtype == "f32" and info.version.startswith("mrank-coordinator "), info
    parts = list(c.rerank_stream("what is a fox", docs, timeout=60))
    assert len(parts) == 2 and not parts[0].final and parts[-1].final, parts
    parts = list(c.rerank_stream("what is a fox", docs, timeout=60, top_n=1, request_id="s"))
    assert len(parts[-1].results) == 1 and parts[-1].request_id == "s", parts
    for call in (c.rerank, c.rerank_stream):
        try:
            call("what is a fox", docs, topn=3)
            raise SystemExit(f"{call.__name__}: an unknown argument was accepted")
        except TypeError as e:
            assert "topn" in str(e) and "top_n" in str(e), e
    print("ok: rerank_stream sends top_n; an unknown argument is a TypeError")
    r = c.rerank("what is a fox", docs, timeout=60, return_documents=True)
    assert {x.document.text for x in r.results} == {docs[0], docs[1], docs[2]["text"]}, r
    assert pickle.loads(pickle.dumps(r)) == r
    print("ok: return_documents; a response pickles")
    huge = " ".join(["fox"] * 2000)
    r = c.rerank("what is a fox", [huge], timeout=60)
    assert r.results[0].truncated, r
    try:
        c.rerank("what is a fox", [huge], timeout=60, truncate="none")
        raise SystemExit("truncate='none' was not sent")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    r = c.rerank("what is a fox", docs, timeout=60, overrides=[{"stage": 0, "keep_top_k": 1}])
    assert sorted(x.stage for x in r.results) == [0, 0, 1], r
    print("ok: truncate and overrides are sent")
    try:
        c.rerank("", docs, timeout=10)
        raise SystemExit("an empty query was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    # chunking: a document longer than one window is scored in chunks, and says which won
    long_doc = " ".join(["the committee met on tuesday to discuss the budget"] * 6 +
                        ["a fox is a small omnivorous mammal"])
    r = c.rerank("what is a fox", [long_doc, docs[1]], timeout=60,
                 chunking={"window": 16, "stride": 8, "max_chunks": 8})
    won = [x for x in r.results if x.index == 0][0]
    assert won.chunk_length > 0 and won.chunk_offset + won.chunk_length <= len(long_doc), won
    try:
        c.rerank("what is a fox", docs, timeout=10, chunking={"window": 8, "stride": 16})
        raise SystemExit("a stride above the window was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "stride" in e.details(), e
async def main():
    async with AsyncClient(addr) as c:
        r = await c.rerank("what is a fox", docs, timeout=60)
        assert sorted(x.index for x in r.results) == [0, 1, 2], r
        i = await c.info(timeout=10)
        assert i.dtype == "f32"
        parts = [p async for p in c.rerank_stream("what is a fox", docs, top_n=2)]
        assert len(parts) == 2 and parts[-1].final and len(parts[-1].results) == 2, parts
asyncio.run(main())
print("ok: sync rerank/info/stream/error/chunking and asyncio rerank/info/stream")
PYEOF
echo PASS
