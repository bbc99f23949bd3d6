#!/usr/bin/env bash
# go_client.sh: the Go client module (clients/go: package mrank, generated package mrankpb,
# ./example) against a live worker + coordinator. Built offline like a user would after
# `go generate ./...`: protoc-gen-go writes mrankpb from proto/mrank.proto (its go_package
# names the module), then `go build ./example` and `go test -c ./mrank` in GOPATH mode over
# Debian's /usr/share/gocode (golang-google-grpc-dev; no module download). The binaries are
# cached by the hash of their sources, so later runs skip the CPU-heavy build. The package's
# tests (clients/go/mrank/client_test.go, against a stand-in server in their own process) must
# pass: an API key on plaintext refused unless Insecure, Cert and Key together, TLS is TLS, the
# default deadline, a stream cancelled when fn fails, a 6 MiB answer. The example's rerank,
# RerankStream and Info must answer: 3 documents ranked, 2 stream messages (2 stages), dtype
# f32; with $MRANK_API_KEY it must refuse plaintext, and -insecure must send the key.
# Usage: bash tests/go_client.sh path/to/mrank   (from the repo root)
set -euo pipefail
MRANK=$(readlink -f "${1:?usage: go_client.sh path/to/mrank}")
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
for t in go protoc protoc-gen-go; do
  command -v $t >/dev/null || { echo "FAIL: needs $t (scripts/setup.sh installs it)"; exit 1; }
done
. tests/lib/harness.bash
mr_harness goc
MR_FAIL_TAIL=8

cache=${TMPDIR:-/tmp}/mrank-go-module
bin=$cache/example_$(cat clients/go/go.mod clients/go/mrank/*.go clients/go/example/*.go \
  clients/go/mrankpb/generate.go proto/mrank.proto | md5sum | cut -c1-16)
if [ ! -x "$bin" ] || [ ! -x "$bin.test" ]; then
  mkdir -p "$cache"
  gp=$work/gopath
  mod=$gp/src/github.com/mrank/mrank/clients/go
  mkdir -p "$(dirname "$mod")"
  cp -r clients/go "$mod"
  (cd "$mod/mrankpb" && protoc -I"$OLDPWD/proto" --go_out=plugins=grpc,paths=source_relative:. \
    mrank.proto) || fail "protoc-gen-go"
  (cd "$mod" && GO111MODULE=off GOPATH="$gp:/usr/share/gocode" GOFLAGS= \
    timeout 600 nice go build -o "$bin.tmp" ./example &&
    GO111MODULE=off GOPATH="$gp:/usr/share/gocode" GOFLAGS= \
    timeout 600 nice go test -c -o "$bin.test.tmp" ./mrank) >"$work/go_build.log" 2>&1 ||
    fail "go build: $(tail -5 "$work/go_build.log")"
  mv "$bin.test.tmp" "$bin.test"
  mv "$bin.tmp" "$bin"
fi
echo "ok: clients/go builds ($bin)"
timeout 120 "$bin.test" -test.v -test.timeout 100s >"$work/go_test.log" 2>&1 ||
  fail "go test ./mrank: $(grep -E '^(---|\s+client_test)' "$work/go_test.log" | tail -8)"
grep -E '^(--- |ok|PASS)|client_test.go' "$work/go_test.log" | sed 's/^/  /'
echo "ok: package mrank's tests pass against a stand-in server"

mr_ports 6
mr_tiny_model
mr_tiny_config two
mr_start_worker
mr_start_coordinator
mr_wait_serving
"$bin" -addr 127.0.0.1:$PC >"$work/out.json" 2>"$work/example.log" || fail "example exit $?"
$PY - "$work/out.json" <<'PYEOF' || fail "example output: $(cat "$work/out.json")"
import json, sys
o = json.load(open(sys.argv[1]))
assert sorted(o["order"]) == [0, 1, 2], o
assert o["stream_messages"] == 2, o
assert o["dtype"] == "f32" and o["version"].startswith("mrank-coordinator "), o
PYEOF
echo "ok: the Go example ranked, streamed and read Info: $(cat "$work/out.json")"
rc=0; MRANK_API_KEY=k1 "$bin" -addr 127.0.0.1:$PC >"$work/out.json" 2>"$work/refused.txt" || rc=$?
[ $rc = 1 ] && grep -q "plaintext" "$work/refused.txt" ||
  fail "an API key on plaintext: exit $rc, $(cat "$work/refused.txt")"
echo "ok: refused: $(cat "$work/refused.txt")"
MRANK_API_KEY=k1 "$bin" -addr 127.0.0.1:$PC -insecure >"$work/out.json" 2>"$work/example.log" ||
  fail "-insecure with a key: exit $?"
echo "ok: -insecure sends the key over plaintext (the cluster has no api_keys, so any key passes)"
echo PASS
