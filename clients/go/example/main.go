// example: rerank three documents with the mrank Go client and print the ranking, the
// partial rankings of RerankStream and the coordinator's Info as JSON lines. An API key comes
// from $MRANK_API_KEY; it needs TLS (-tls: system root CAs, or -ca CA.pem), or -insecure to
// send it over plaintext anyway (a loopback test cluster).
//
//	./mrank-example -addr 127.0.0.1:7100   (build: clients/go/README.md)
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/mrank/mrank/clients/go/mrank"
	pb "github.com/mrank/mrank/clients/go/mrankpb"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:7100", "coordinator address")
	useTLS := flag.Bool("tls", false, "TLS, verified against the system's root CAs")
	ca := flag.String("ca", "", "TLS, verified against this CA (PEM file)")
	insecure := flag.Bool("insecure", false, "send $MRANK_API_KEY over plaintext anyway")
	flag.Parse()
	c, err := mrank.Dial(*addr, mrank.Options{TLS: *useTLS, CA: *ca, Insecure: *insecure,
		APIKey: os.Getenv("MRANK_API_KEY")})
	if err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(1)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req := mrank.Request("what is a fox", []string{"a fox is a small omnivorous mammal",
		"paris is the capital of france", "foxes live in forests"})
	req.TopN = 3
	resp, err := c.Rerank(ctx, req)
	if err != nil {
		fmt.Fprintln(os.Stderr, "example: rerank:", err)
		os.Exit(3)
	}
	var order []uint32
	for _, r := range resp.Results {
		order = append(order, r.Index)
	}
	partials := 0
	err = c.RerankStream(ctx, req, func(r *pb.RerankResponse) error { partials++; return nil })
	if err != nil {
		fmt.Fprintln(os.Stderr, "example: stream:", err)
		os.Exit(3)
	}
	info, err := c.Info(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "example: info:", err)
		os.Exit(3)
	}
	b, _ := json.Marshal(map[string]interface{}{"order": order, "stream_messages": partials,
		"dtype": info.Dtype, "version": info.Version})
	fmt.Println(string(b))
}
