#!/usr/bin/env bash
# Builds the Go Rerank client offline: GOPATH mode over Debian's /usr/share/gocode
# (golang-google-grpc-dev, golang-goprotobuf-dev), stubs generated from proto/mrank.proto with
# protoc-gen-go's grpc plugin. Usage: build.sh OUT_BINARY  (exit 2 when Go is not installed)
set -euo pipefail
out=$1
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
command -v go >/dev/null && command -v protoc-gen-go >/dev/null || exit 2
gp=$(mktemp -d)
trap 'rm -rf "$gp"' EXIT
mkdir -p "$gp/src/mrankpb" "$gp/src/rerank_client"
protoc -I"$repo/proto" --go_out=plugins=grpc,paths=source_relative,Mmrank.proto=mrankpb:"$gp/src/mrankpb" mrank.proto
cp "$here/main.go" "$gp/src/rerank_client/"
cd "$gp/src/rerank_client"
GO111MODULE=off GOPATH="$gp:/usr/share/gocode" GOFLAGS= \
  go build -o "$out" .
