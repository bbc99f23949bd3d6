// Package mrank is the Go client of mrank's public API (mrank.v1.Ranker, served by `mrank
// coordinator` or `mrank up`): a connection with optional TLS/mTLS and an API key, Rerank,
// RerankStream and Info. An API key travels as per-RPC credentials ("authorization: Bearer
// KEY") that require TLS: Dial refuses a key on a plaintext connection unless Options.Insecure
// says to send it in clear anyway. Every call gets a deadline: ctx's, else Options.Timeout
// (DefaultTimeout, 30 s). Connections ping every 30 s (the server accepts a ping per second)
// and accept answers up to 64 MiB, the server's limit. Errors are gRPC status errors
// (status.FromError): INVALID_ARGUMENT names the bad field, RESOURCE_EXHAUSTED carries
// "retry-after-ms" in the trailer.
package mrank

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	pb "github.com/mrank/mrank/clients/go/mrankpb"
)

const (
	// DefaultTimeout is the deadline of a call whose ctx has none (Options.Timeout 0).
	DefaultTimeout = 30 * time.Second
	// MaxMessage is the largest answer accepted: the server's limit (rpc/rpc.h).
	MaxMessage = 64 << 20
	// KeepaliveTime is how often an idle connection is pinged; the server accepts one ping
	// per second, so this stays far above it.
	KeepaliveTime = 30 * time.Second
	// KeepaliveTimeout closes a connection whose ping went unanswered this long.
	KeepaliveTimeout = 10 * time.Second
)

// Options of a connection; the zero value is plaintext without a key. Any of TLS, CA, Cert
// and Key turns TLS on.
type Options struct {
	TLS      bool   // TLS verified against the system's root CAs (unless CA is set)
	CA       string // PEM file of the CA that signed the server
	Cert     string // client certificate (PEM) for mTLS, with Key
	Key      string
	APIKey   string // sent as "authorization: Bearer KEY"; needs TLS unless Insecure
	Insecure bool   // send APIKey over a plaintext connection (e.g. a loopback test cluster)
	// Timeout is the deadline of a call whose ctx has none: 0 means DefaultTimeout, a
	// negative value none (a tier without a budget may then wait forever).
	Timeout time.Duration
}

// Client is one connection to a coordinator; safe for concurrent use.
type Client struct {
	conn    *grpc.ClientConn
	ranker  pb.RankerClient
	timeout time.Duration
}

// bearer is the API key as per-RPC credentials.
type bearer struct {
	key    string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.key}, nil
}

func (b bearer) RequireTransportSecurity() bool { return b.secure }

func tlsConfig(o Options) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12} // RootCAs nil: the system's
	if o.CA != "" {
		pem, err := os.ReadFile(o.CA)
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
	return cfg, nil
}

// Dial connects to target ("127.0.0.1:7100") lazily.
func Dial(target string, o Options) (*Client, error) {
	if (o.Cert == "") != (o.Key == "") {
		return nil, errors.New("mrank: Cert and Key go together (mTLS): set both or neither")
	}
	secure := o.TLS || o.CA != "" || o.Cert != ""
	if o.APIKey != "" && !secure && !o.Insecure {
		return nil, fmt.Errorf("mrank: refusing to send the API key to %s over plaintext, "+
			"where anyone on the path can read it: set Options.TLS (system root CAs) or "+
			"Options.CA, or Options.Insecure to send it in clear anyway (e.g. a loopback "+
			"test cluster)", target)
	}
	opts := []grpc.DialOption{
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessage)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time: KeepaliveTime, Timeout: KeepaliveTimeout, PermitWithoutStream: true}),
	}
	if secure {
		cfg, err := tlsConfig(o)
		if err != nil {
			return nil, err
		}
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	} else {
		opts = append(opts, grpc.WithInsecure())
	}
	if o.APIKey != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer{key: o.APIKey, secure: !o.Insecure}))
	}
	conn, err := grpc.Dial(target, opts...)
	if err != nil {
		return nil, err
	}
	timeout := o.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	return &Client{conn: conn, ranker: pb.NewRankerClient(conn), timeout: timeout}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// ctx is ctx with the default deadline when it has none, and a cancel to call when done.
func (c *Client) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); !ok && c.timeout > 0 {
		return context.WithTimeout(ctx, c.timeout)
	}
	return context.WithCancel(ctx)
}

// Request builds a RerankRequest of query and documents (texts); set TopN, Tier, Profile,
// RequestId, ReturnDocuments, Truncate, Overrides, Chunking on it as needed.
func Request(query string, documents []string) *pb.RerankRequest {
	req := &pb.RerankRequest{Query: query}
	for _, d := range documents {
		req.Documents = append(req.Documents, &pb.Document{Text: d})
	}
	return req
}

// Rerank sends req; the deadline is ctx's, else the client's Timeout.
func (c *Client) Rerank(ctx context.Context, req *pb.RerankRequest) (*pb.RerankResponse, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	return c.ranker.Rerank(ctx, req)
}

// RerankStream calls fn with the partial ranking after each stage, then the final one. An
// error from fn ends the call (the stream is cancelled) and is returned.
func (c *Client) RerankStream(ctx context.Context, req *pb.RerankRequest,
	fn func(*pb.RerankResponse) error) error {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	s, err := c.ranker.RerankStream(ctx, req)
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
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	return c.ranker.Info(ctx, &pb.InfoRequest{})
}
