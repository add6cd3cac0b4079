package edge_test

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"portcullis/edge"
	"portcullis/internal/siptest"
)

// tcpRelay forwards connections to target, and can cut them all (a network
// blip between edge and core: both ends see their connection end, and the
// edge's next connection reaches the core from a new port).
type tcpRelay struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
}

func newTCPRelay(t *testing.T, target string) *tcpRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &tcpRelay{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); r.cut() })
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			r.mu.Lock()
			r.conns = append(r.conns, in, out)
			r.mu.Unlock()
			go func() { _, _ = io.Copy(out, in); out.Close() }()
			go func() { _, _ = io.Copy(in, out); in.Close() }()
		}
	}()
	return r
}

func (r *tcpRelay) cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = nil
}

// A call from a remote user survives a break in the edge's link to the
// core: after the edge has connected again (from a new port), each party's
// BYE still reaches the other.
func TestAccessEdgeDialogSurvivesLinkBreak(t *testing.T) {
	e := newEnv(t)
	var relay *tcpRelay
	c, ed := e.startAccess(func(cfg *edge.Config) {
		relay = newTCPRelay(t, cfg.Core.Address)
		cfg.Core.Address = relay.ln.Addr().String()
	})
	_, alice, bob := e.phones(c, ed)
	_, edgeOps := ed.Addr()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i, hangUp := range []string{"caller", "callee"} {
		sess, err := alice.Call(ctx, "sip:alice@example.test", "alice", pw, "sip:bob@example.test")
		if err != nil || sess.InviteResponse.StatusCode != 200 {
			t.Fatalf("call in: %v", err)
		}
		if err := sess.Ack(ctx); err != nil {
			t.Fatal(err)
		}
		siptest.Eventually(t, "bob gets the ACK", func() bool { return bob.Acks.Load() == int32(i+1) })

		relay.cut()
		time.Sleep(300 * time.Millisecond) // the edge notices and connects again
		waitReadyz(t, edgeOps, 200)

		switch hangUp {
		case "caller":
			if err := sess.Bye(ctx); err != nil {
				t.Fatalf("BYE from the remote caller after the link broke: %v", err)
			}
			siptest.Eventually(t, "bob gets alice's BYE", func() bool { return bob.Byes.Load() == 1 })
		case "callee":
			if err := bob.Incoming().Bye(ctx); err != nil {
				t.Fatalf("BYE from the internal callee after the link broke: %v", err)
			}
			siptest.Eventually(t, "alice gets bob's BYE", func() bool { return alice.Byes.Load() == 1 })
		}
	}
}
