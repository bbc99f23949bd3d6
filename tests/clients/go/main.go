// rerank_client: a Go gRPC client of mrank.v1.Ranker (grpc-go from Debian's
// golang-google-grpc-dev, an independent HTTP/2 stack). Sends one Rerank and prints the
// response as JSON; a non-OK status prints {"code", "message"} and exits 3.
//
//	rerank_client -addr HOST:PORT -query Q -docs FILE [-profile P] [-tier T] [-top-n N]
//	              [-ca CA.pem] [-cert C.pem -key K.pem] [-api-key KEY]
//
// -ca turns on TLS (verifying the server with CA.pem), -cert/-key add a client certificate
// (mTLS), -api-key (default $MRANK_API_KEY) is sent as "authorization: Bearer KEY".
// FILE holds one document per line. Built offline by build.sh (GOPATH mode, /usr/share/gocode).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io/ioutil"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "mrankpb"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:7100", "coordinator address")
	query := flag.String("query", "", "query")
	docs := flag.String("docs", "", "file with one document per line")
	profile := flag.String("profile", "", "cascade profile")
	tier := flag.String("tier", "", "tier")
	topN := flag.Uint("top-n", 0, "best N only")
	timeout := flag.Duration("timeout", 30*time.Second, "deadline")
	caFile := flag.String("ca", "", "TLS: PEM CA that verifies the server")
	certFile := flag.String("cert", "", "mTLS: client certificate (PEM)")
	keyFile := flag.String("key", "", "mTLS: the client certificate's key (PEM)")
	apiKey := flag.String("api-key", os.Getenv("MRANK_API_KEY"), "API key (authorization: Bearer KEY)")
	flag.Parse()

	text, err := ioutil.ReadFile(*docs)
	if err != nil {
		fmt.Fprintln(os.Stderr, "rerank_client:", err)
		os.Exit(2)
	}
	req := &pb.RerankRequest{Query: *query, Profile: *profile, Tier: *tier, TopN: uint32(*topN)}
	for _, line := range strings.Split(string(text), "\n") {
		if line != "" {
			req.Documents = append(req.Documents, &pb.Document{Text: line})
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if *apiKey != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+*apiKey)
	}
	dial := grpc.WithInsecure()
	if *caFile != "" || *certFile != "" {
		cfg := &tls.Config{}
		if *caFile != "" {
			pem, err := ioutil.ReadFile(*caFile)
			pool := x509.NewCertPool()
			if err != nil || !pool.AppendCertsFromPEM(pem) {
				fmt.Fprintln(os.Stderr, "rerank_client: -ca", *caFile, ": no PEM certificate", err)
				os.Exit(2)
			}
			cfg.RootCAs = pool
		}
		if *certFile != "" {
			pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
			if err != nil {
				fmt.Fprintln(os.Stderr, "rerank_client: -cert/-key:", err)
				os.Exit(2)
			}
			cfg.Certificates = []tls.Certificate{pair}
		}
		dial = grpc.WithTransportCredentials(credentials.NewTLS(cfg))
	}
	conn, err := grpc.DialContext(ctx, *addr, dial)
	if err != nil {
		fmt.Fprintln(os.Stderr, "rerank_client:", err)
		os.Exit(1)
	}
	defer conn.Close()
	resp, err := pb.NewRankerClient(conn).Rerank(ctx, req)
	if err != nil {
		st, _ := status.FromError(err)
		out, _ := json.Marshal(map[string]string{"code": st.Code().String(), "message": st.Message()})
		fmt.Println(string(out))
		os.Exit(3)
	}
	type result struct {
		Index          uint32  `json:"index"`
		RelevanceScore float32 `json:"relevance_score"`
		RawScore       float32 `json:"raw_score"`
		Stage          uint32  `json:"stage"`
		Depth          uint32  `json:"depth"`
		CompressRatio  uint32  `json:"compress_ratio"`
	}
	out := struct {
		Results  []result `json:"results"`
		Degraded bool     `json:"degraded"`
		Profile  string   `json:"profile"`
		Tier     string   `json:"tier"`
	}{Degraded: resp.Degraded, Profile: resp.Profile, Tier: resp.Tier}
	for _, r := range resp.Results {
		out.Results = append(out.Results, result{r.Index, r.RelevanceScore, r.RawScore, r.Stage,
			r.Depth, r.CompressRatio})
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
}
