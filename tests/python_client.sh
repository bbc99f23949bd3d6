#!/usr/bin/env bash
# python_client.sh: the packaged Python client (clients/python) against a live cluster. The
# package is built and installed offline into a venv under the build folder (--system-site-
# packages: Debian's grpcio and protobuf; --no-build-isolation --no-deps: nothing fetched),
# which generates its protobuf module once, at build time; then its README example runs
# against `mrank worker` + `mrank coordinator`: sync rerank and info, RerankStream, asyncio
# rerank, an API error as grpc.RpcError, chunking of a long document (and its validation), and
# no protoc call at run time (PATH without it).
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

mr_ports 9
mr_tiny_model
mr_tiny_config two
mr_start_worker
mr_start_coordinator
mr_wait_serving

# run from elsewhere, with no protoc on PATH: the stubs must come from the installed package
(cd "$work" && PATH="$venv/bin" "$venv/bin/python" - 127.0.0.1:$PC) <<'PYEOF' || fail "client"
import asyncio, sys
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
asyncio.run(main())
print("ok: sync rerank/info/stream/error/chunking and asyncio rerank/info")
PYEOF
echo PASS
