#!/usr/bin/env bash
# go_client.sh: the Go client module (clients/go: package mrank, generated package mrankpb,
# ./example) against a live worker + coordinator. Built offline like a user would after
# `go generate ./...`: protoc-gen-go writes mrankpb from proto/mrank.proto (its go_package
# names the module), then `go build ./example` in GOPATH mode over Debian's /usr/share/gocode
# (golang-google-grpc-dev; no module download). The binary is cached by the hash of its
# sources, so later runs skip the CPU-heavy build. The example's rerank, RerankStream and
# Info must answer: 3 documents ranked, 2 stream messages (2 stages), dtype f32.
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
if [ ! -x "$bin" ]; then
  mkdir -p "$cache"
  gp=$work/gopath
  mod=$gp/src/github.com/mrank/mrank/clients/go
  mkdir -p "$(dirname "$mod")"
  cp -r clients/go "$mod"
  (cd "$mod/mrankpb" && protoc -I"$OLDPWD/proto" --go_out=plugins=grpc,paths=source_relative:. \
    mrank.proto) || fail "protoc-gen-go"
  (cd "$mod" && GO111MODULE=off GOPATH="$gp:/usr/share/gocode" GOFLAGS= \
    timeout 600 nice go build -o "$bin.tmp" ./example) >"$work/go_build.log" 2>&1 ||
    fail "go build: $(tail -5 "$work/go_build.log")"
  mv "$bin.tmp" "$bin"
fi
echo "ok: clients/go builds ($bin)"

"$MRANK" init-checkpoint --arch mistral --layers 4 --hidden 64 --heads 4 --kv-heads 2 \
  --intermediate 128 --vocab-from third_party/tokenizers/llama2/tokenizer.json \
  --start-layer 1 --dtype f32 --seed 1 --out "$work/model" >/dev/null
base=$(( 20000 + (RANDOM % 2000) * 10 + 6 ))
PC=$base; PW=$((base+1))
cat >"$work/cluster.json" <<JSON
{
  "model": "$work/model",
  "coordinator": {"metrics_port": 0},
  "pools": [{"name": "full", "addresses": ["127.0.0.1:$PW"]}],
  "stages": [{"name": "half", "pool": "full", "depth": 2}, {"name": "full", "pool": "full", "depth": 4}],
  "profiles": [{"name": "p", "stages": [{"stage": "half", "keep_top_k": 2}, {"stage": "full"}]}],
  "tiers": [{"name": "exact", "budget_ms": 0, "priority": 1, "profile": "p"}],
  "default_tier": "exact"
}
JSON
"$MRANK" worker --model "$work/model" --listen 127.0.0.1:$PW --threads 1 2>"$work/worker.log" &
pids+=($!)
"$MRANK" coordinator --config "$work/cluster.json" --listen 127.0.0.1:$PC 2>"$work/coord.log" &
pids+=($!)
$PY tests/clients/rerank_client.py wait 127.0.0.1:$PC --timeout 120 >/dev/null ||
  fail "coordinator not SERVING"
"$bin" -addr 127.0.0.1:$PC >"$work/out.json" 2>"$work/example.log" || fail "example exit $?"
$PY - "$work/out.json" <<'PYEOF' || fail "example output: $(cat "$work/out.json")"
import json, sys
o = json.load(open(sys.argv[1]))
assert sorted(o["order"]) == [0, 1, 2], o
assert o["stream_messages"] == 2, o
assert o["dtype"] == "f32" and o["version"].startswith("mrank-coordinator "), o
PYEOF
echo "ok: the Go example ranked, streamed and read Info: $(cat "$work/out.json")"
echo PASS
