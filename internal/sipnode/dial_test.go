package sipnode

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/goleak"

	"portcullis/access"
	"portcullis/access/accesstest"
)

// dialPair is a node with a mutual-TLS listener ("core") and a node that
// dials it ("edge"), on loopback; the core answers MESSAGE 200.
func dialPair(t *testing.T) (core, edge *Node, messages *atomic.Int32) {
	t.Helper()
	pki := accesstest.New(t)
	log := slog.New(slog.DiscardHandler)
	core, err := New(Config{
		Name: "core", Hostname: "core.test", Listen: "127.0.0.1:0",
		Material: accesstest.Material(t, pki.Node(t, "core.test")),
		Allow:    access.NewAllowList([]string{"edge.test"}), HandshakeTimeout: 5 * time.Second, Log: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	messages = &atomic.Int32{}
	core.Handle(sip.MESSAGE, func(_ *access.PeerIdentity, req *sip.Request, tx sip.ServerTransaction) {
		messages.Add(1)
		_ = tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
	})
	core.Serve()
	edgeMat := accesstest.Material(t, pki.Node(t, "edge.test"))
	edge, err = New(Config{Name: "edge", Hostname: "edge.test", ClientTLS: access.ClientConfig(edgeMat, "core.test"), HandshakeTimeout: 5 * time.Second, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { edge.Close(); core.Close() })
	return core, edge, messages
}

func message(t *testing.T, n *Node, dest string) {
	t.Helper()
	req := sip.NewRequest(sip.MESSAGE, sip.Uri{Scheme: "sip", User: "bob", Host: "core.test", UriParams: sip.HeaderParams{{K: "transport", V: "tls"}}})
	req.SetDestination(dest)
	req.SetBody([]byte("hi"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := n.Client.Do(ctx, req)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("MESSAGE: %v %v", res, err)
	}
}

// Connect dials one connection however many ask at once, hands it to sipgo
// (requests to that address then go over it: no second connection), dials
// again once it is gone, and leaves names to sipgo. Closing the node ends
// everything it started.
func TestConnect(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) }) // runs after dialPair's
	core, edge, messages := dialPair(t)
	addr := core.Addr()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Go(func() { errs <- edge.Connect(ctx, addr) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Connect: %v", err)
		}
	}
	waitFor(t, func() bool { return core.PeerCount() > 0 }) // the core admits it after its own checks
	time.Sleep(50 * time.Millisecond)
	if got := core.PeerCount(); got != 1 {
		t.Fatalf("20 Connects at once opened %d connections", got)
	}
	for range 3 {
		message(t, edge, addr)
	}
	if messages.Load() != 3 || core.PeerCount() != 1 {
		t.Fatalf("%d messages over %d connections, want 3 over the one dialled", messages.Load(), core.PeerCount())
	}

	// The connection goes: the next Connect dials a new one.
	pool := edge.UA.TransportLayer().Pool("tls")
	c := pool.Get(addr)
	if c == nil {
		t.Fatal("the dialled connection is not in sipgo's pool")
	}
	c.Close()
	waitFor(t, func() bool { return core.PeerCount() == 0 })
	waitFor(t, func() bool {
		c := pool.Get(addr)
		if c != nil {
			c.TryClose()
		}
		return c == nil
	})
	if err := edge.Connect(ctx, addr); err != nil {
		t.Fatalf("Connect after the connection went: %v", err)
	}
	message(t, edge, addr)
	if messages.Load() != 4 || core.PeerCount() != 1 {
		t.Fatalf("%d messages, %d connections after the redial", messages.Load(), core.PeerCount())
	}

	// An IPv4-mapped address is the same peer: no second connection.
	_, port, _ := net.SplitHostPort(addr)
	if err := edge.Connect(ctx, "[::ffff:127.0.0.1]:"+port); err != nil {
		t.Fatalf("Connect to the IPv4-mapped address: %v", err)
	}
	time.Sleep(50 * time.Millisecond)
	if core.PeerCount() != 1 {
		t.Fatalf("%d connections after a Connect to the IPv4-mapped address", core.PeerCount())
	}

	// A name is sipgo's to resolve (it resolves none): nothing is dialled.
	if err := edge.Connect(ctx, "localhost:5061"); err != nil {
		t.Fatalf("Connect to a name: %v", err)
	}
	// Nothing listening: the dial's error, at once.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	if err := edge.Connect(ctx, dead); err == nil {
		t.Fatal("Connect to a closed port succeeded")
	}
	// A node without client TLS never dials.
	if err := core.Connect(ctx, addr); err != nil {
		t.Fatalf("Connect on a node that never dials: %v", err)
	}
	if core.PeerCount() != 1 {
		t.Fatal("a node without client TLS dialled")
	}
}

// A certificate the client configuration refuses fails Connect, and
// nothing is pooled.
func TestConnectRefusedCertificate(t *testing.T) {
	core, edge, _ := dialPair(t)
	other := accesstest.New(t) // another CA
	mat := accesstest.Material(t, other.Node(t, "edge.test"))
	stranger, err := New(Config{Name: "stranger", Hostname: "edge.test", ClientTLS: access.ClientConfig(mat, "core.test"), HandshakeTimeout: 5 * time.Second, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := stranger.Connect(ctx, core.Addr()); err == nil {
		t.Fatal("a core under another CA was accepted")
	}
	if c := stranger.UA.TransportLayer().Pool("tls").Get(core.Addr()); c != nil {
		t.Fatal("a refused connection was pooled")
	}
	if err := edge.Connect(ctx, core.Addr()); err != nil {
		t.Fatalf("the trusted node: %v", err)
	}
}
