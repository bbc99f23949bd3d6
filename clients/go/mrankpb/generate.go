// Package mrankpb holds the Go messages and gRPC stubs of proto/mrank.proto (package
// mrank.v1). They are generated, not committed: run `go generate ./...` in clients/go (needs
// protoc and protoc-gen-go with its grpc plugin, Debian golang-goprotobuf-dev) before
// building; tests/go_client.sh does the same offline.
package mrankpb

//go:generate protoc -I../../../proto --go_out=plugins=grpc,paths=source_relative:. mrank.proto
