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

// Calls with a remote user survive a break in the edge's link to the
// core: after the edge has connected again (from a new port), each party's
// BYE still reaches the other, whoever called.
func TestAccessEdgeDialogSurvivesLinkBreak(t *testing.T) {
	e := newEnv(t)
	var relay *tcpRelay
	c, ed := e.startAccess(func(cfg *edge.Config) {
		relay = newTCPRelay(t, cfg.Core.Address)
		cfg.Core.Address = relay.ln.Addr().String()
	})
	_, alice, bob := e.phones(c, ed) // alice remote, bob inside
	_, edgeOps := ed.Addr()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name           string
		caller, callee *siptest.Phone
		from, user, to string
		callerHangsUp  bool
	}{
		{"remote caller hangs up", alice, bob, "sip:alice@example.test", "alice", "sip:bob@example.test", true},
		{"internal callee hangs up", alice, bob, "sip:alice@example.test", "alice", "sip:bob@example.test", false},
		{"internal caller hangs up", bob, alice, "sip:bob@example.test", "bob", "sip:alice@example.test", true},
		{"remote callee hangs up", bob, alice, "sip:bob@example.test", "bob", "sip:alice@example.test", false},
	} {
		acks := tc.callee.Acks.Load()
		sess, err := tc.caller.Call(ctx, tc.from, tc.user, pw, tc.to)
		if err != nil || sess.InviteResponse.StatusCode != 200 {
			t.Fatalf("%s: call: %v", tc.name, err)
		}
		if err := sess.Ack(ctx); err != nil {
			t.Fatal(err)
		}
		siptest.Eventually(t, tc.name+": the ACK arrives", func() bool { return tc.callee.Acks.Load() == acks+1 })

		relay.cut()
		time.Sleep(300 * time.Millisecond) // the edge notices and connects again
		waitReadyz(t, edgeOps, 200)

		hearer, bye := tc.callee, func() error { return sess.Bye(ctx) }
		if !tc.callerHangsUp {
			hearer, bye = tc.caller, func() error { return tc.callee.Incoming().Bye(ctx) }
		}
		byes := hearer.Byes.Load()
		if err := bye(); err != nil {
			t.Fatalf("%s after the link broke: BYE: %v", tc.name, err)
		}
		siptest.Eventually(t, tc.name+": the BYE arrives", func() bool { return hearer.Byes.Load() == byes+1 })
	}
}
