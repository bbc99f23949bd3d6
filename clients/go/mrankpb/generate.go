// Package mrankpb holds the Go messages and gRPC stubs of proto/mrank.proto (package
// mrank.v1). They are generated, not committed: run `go generate ./...` in clients/go before
// building; tests/go_client.sh does the same offline. It needs protoc and the protoc-gen-go of
// github.com/golang/protobuf (Debian golang-goprotobuf-dev: 1.3.5, the tested one), whose
// plugins=grpc writes the stubs; the protoc-gen-go of google.golang.org/protobuf (1.20 and
// later) refuses plugins=grpc (it wants protoc-gen-go-grpc and --go-grpc_out instead).
package mrankpb

//go:generate protoc -I../../../proto --go_out=plugins=grpc,paths=source_relative:. mrank.proto
