module github.com/mrank/mrank/clients/go

go 1.19

require (
	github.com/golang/protobuf v1.4.3
	google.golang.org/grpc v1.33.3
)
