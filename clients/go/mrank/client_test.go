// client_test.go: what the client sends and how it ends calls, against a stand-in Ranker
// served in the test's process on loopback (not mrank itself; tests/go_client.sh also runs
// ./example against a live cluster): an API key on plaintext is refused unless Insecure, which
// then sends it; Cert and Key go together; TLS really is TLS; the default deadline is 30 s,
// Options.Timeout and ctx's deadline override it; an error from RerankStream's fn cancels the
// stream; an answer over gRPC's default 4 MiB receive limit arrives.
package mrank

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/mrank/mrank/clients/go/mrankpb"
)

type standIn struct {
	pb.UnimplementedRankerServer
	remaining chan time.Duration // the deadline each Rerank saw (-1: none)
	auth      chan string
	cancelled chan struct{} // a RerankStream's context ended
}

func (s *standIn) Rerank(ctx context.Context, req *pb.RerankRequest) (*pb.RerankResponse, error) {
	rem := time.Duration(-1)
	if d, ok := ctx.Deadline(); ok {
		rem = time.Until(d)
	}
	s.remaining <- rem
	md, _ := metadata.FromIncomingContext(ctx)
	s.auth <- strings.Join(md.Get("authorization"), ",")
	r := &pb.RerankResponse{RequestId: req.RequestId}
	switch req.Query {
	case "sleep":
		select {
		case <-time.After(3 * time.Second):
		case <-ctx.Done():
			// as a server does: an answer after the deadline is not a success (returning r
			// raced the client's own timer, and once won: <nil> after 502 ms)
			return nil, status.Error(codes.DeadlineExceeded, "deadline passed")
		}
	case "big": // 6 MiB: over gRPC's default receive limit of 4 MiB
		r.Results = []*pb.RerankResult{{Document: &pb.Document{Text: strings.Repeat("x", 6<<20)}}}
	}
	return r, nil
}

func (s *standIn) RerankStream(req *pb.RerankRequest, st pb.Ranker_RerankStreamServer) error {
	for i := 0; i < 2; i++ {
		if err := st.Send(&pb.RerankResponse{}); err != nil {
			return err
		}
	}
	<-st.Context().Done() // a stream that never ends by itself
	s.cancelled <- struct{}{}
	return st.Context().Err()
}

func serve(t *testing.T) (string, *standIn) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &standIn{remaining: make(chan time.Duration, 16), auth: make(chan string, 16),
		cancelled: make(chan struct{}, 16)}
	srv := grpc.NewServer()
	pb.RegisterRankerServer(srv, s)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String(), s
}

func dial(t *testing.T, addr string, o Options) *Client {
	t.Helper()
	c, err := Dial(addr, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestAPIKeyNeedsTLSOrInsecure(t *testing.T) {
	addr, s := serve(t)
	_, err := Dial(addr, Options{APIKey: "k1"})
	if err == nil || !strings.Contains(err.Error(), "plaintext") ||
		!strings.Contains(err.Error(), "Options.Insecure") {
		t.Fatalf("an API key on plaintext: err %v, want a refusal naming Options.Insecure", err)
	}
	t.Log("refused:", err)
	c := dial(t, addr, Options{APIKey: "k1", Insecure: true})
	if _, err := c.Rerank(context.Background(), Request("q", []string{"d"})); err != nil {
		t.Fatal(err)
	}
	<-s.remaining
	if a := <-s.auth; a != "Bearer k1" {
		t.Fatalf("authorization %q, want Bearer k1", a)
	}
}

func TestCertAndKeyGoTogether(t *testing.T) {
	for _, o := range []Options{{Cert: "c.pem"}, {Key: "k.pem"}, {CA: "ca.pem", Key: "k.pem"}} {
		if _, err := Dial("127.0.0.1:1", o); err == nil ||
			!strings.Contains(err.Error(), "Cert and Key go together") {
			t.Fatalf("%+v: err %v, want Cert and Key go together", o, err)
		}
	}
}

func TestTLSIsTLS(t *testing.T) {
	addr, _ := serve(t) // plaintext: a TLS client must not get an answer
	c := dial(t, addr, Options{TLS: true, APIKey: "k1"})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.Rerank(ctx, Request("q", []string{"d"}))
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("TLS to a plaintext server: %v, want Unavailable", err)
	}
}

func TestDefaultDeadline(t *testing.T) {
	addr, s := serve(t)
	c := dial(t, addr, Options{})
	if _, err := c.Rerank(context.Background(), Request("q", nil)); err != nil {
		t.Fatal(err)
	}
	if rem := <-s.remaining; rem < 25*time.Second || rem > DefaultTimeout+100*time.Millisecond {
		t.Fatalf("the server saw %v left, want about %v", rem, DefaultTimeout)
	}
	<-s.auth
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	if _, err := c.Rerank(ctx, Request("q", nil)); err != nil { // ctx's deadline wins
		t.Fatal(err)
	}
	if rem := <-s.remaining; rem < 45*time.Second {
		t.Fatalf("with ctx's 50 s deadline the server saw %v left", rem)
	}
	<-s.auth
	c = dial(t, addr, Options{Timeout: 500 * time.Millisecond})
	t0 := time.Now()
	_, err := c.Rerank(context.Background(), Request("sleep", nil))
	if status.Code(err) != codes.DeadlineExceeded || time.Since(t0) > 2500*time.Millisecond {
		t.Fatalf("a 3 s call with Timeout 0.5 s: %v after %v", err, time.Since(t0))
	}
	t.Logf("default deadline %v; Timeout 0.5 s ended a 3 s call after %v", DefaultTimeout,
		time.Since(t0).Round(time.Millisecond))
}

func TestStreamCancelledWhenFnFails(t *testing.T) {
	addr, s := serve(t)
	c := dial(t, addr, Options{})
	stop := errors.New("enough")
	err := c.RerankStream(context.Background(), Request("q", nil),
		func(*pb.RerankResponse) error { return stop })
	if err != stop {
		t.Fatalf("RerankStream returned %v, want fn's error", err)
	}
	select {
	case <-s.cancelled:
	// 30 s: a stream that is never cancelled fails; 5 s failed once beside the suite's
	// heaviest tests (a 14.5 GB checkpoint write and the oracle grid on the same 2 cores)
	case <-time.After(30 * time.Second):
		t.Fatal("the stream was not cancelled within 30 s of fn's error")
	}
}

func TestLargeAnswer(t *testing.T) {
	addr, s := serve(t)
	c := dial(t, addr, Options{})
	r, err := c.Rerank(context.Background(), Request("big", nil))
	if err != nil {
		t.Fatalf("a 6 MiB answer: %v", err)
	}
	<-s.remaining
	<-s.auth
	if n := len(r.Results[0].Document.Text); n != 6<<20 {
		t.Fatalf("document of %d bytes", n)
	}
}
