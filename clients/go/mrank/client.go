// Package mrank is the Go client of mrank's public API (mrank.v1.Ranker, served by `mrank
// coordinator` or `mrank up`): a connection with optional TLS/mTLS and an API key, Rerank,
// RerankStream and Info. Errors are gRPC status errors (status.FromError): INVALID_ARGUMENT
// names the bad field, RESOURCE_EXHAUSTED carries "retry-after-ms" in the trailer.
package mrank

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"io/ioutil"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	pb "github.com/mrank/mrank/clients/go/mrankpb"
)

// Options of a connection; the zero value is plaintext without a key.
type Options struct {
	CA     string // PEM file of the CA that signed the server: turns on TLS
	Cert   string // client certificate (PEM) for mTLS, with Key
	Key    string
	APIKey string // sent as "authorization: Bearer KEY"
}

// Client is one connection to a coordinator; safe for concurrent use.
type Client struct {
	conn   *grpc.ClientConn
	ranker pb.RankerClient
	apiKey string
}

// Dial connects to target ("127.0.0.1:7000") lazily.
func Dial(target string, o Options) (*Client, error) {
	dial := grpc.WithInsecure()
	if o.CA != "" || o.Cert != "" {
		cfg := &tls.Config{}
		if o.CA != "" {
			pem, err := ioutil.ReadFile(o.CA)
			if err != nil {
				return nil, err
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("mrank: %s: no PEM certificate", o.CA)
			}
			cfg.RootCAs = pool
		}
		if o.Cert != "" {
			pair, err := tls.LoadX509KeyPair(o.Cert, o.Key)
			if err != nil {
				return nil, err
			}
			cfg.Certificates = []tls.Certificate{pair}
		}
		dial = grpc.WithTransportCredentials(credentials.NewTLS(cfg))
	}
	conn, err := grpc.Dial(target, dial)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, ranker: pb.NewRankerClient(conn), apiKey: o.APIKey}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

func (c *Client) ctx(ctx context.Context) context.Context {
	if c.apiKey != "" {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.apiKey)
	}
	return ctx
}

// Request builds a RerankRequest of query and documents (texts); set TopN, Tier, Profile,
// RequestId on it as needed.
func Request(query string, documents []string) *pb.RerankRequest {
	req := &pb.RerankRequest{Query: query}
	for _, d := range documents {
		req.Documents = append(req.Documents, &pb.Document{Text: d})
	}
	return req
}

// Rerank sends req; the deadline is ctx's.
func (c *Client) Rerank(ctx context.Context, req *pb.RerankRequest) (*pb.RerankResponse, error) {
	return c.ranker.Rerank(c.ctx(ctx), req)
}

// RerankStream calls fn with the partial ranking after each stage, then the final one.
func (c *Client) RerankStream(ctx context.Context, req *pb.RerankRequest,
	fn func(*pb.RerankResponse) error) error {
	s, err := c.ranker.RerankStream(c.ctx(ctx), req)
	if err != nil {
		return err
	}
	for {
		r, err := s.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := fn(r); err != nil {
			return err
		}
	}
}

// Info returns the coordinator's limits, stages, profiles, tiers, model and dtype.
func (c *Client) Info(ctx context.Context) (*pb.InfoResponse, error) {
	return c.ranker.Info(c.ctx(ctx), &pb.InfoRequest{})
}
