package core_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"portcullis/internal/sipnode"
	"portcullis/internal/siptest"
)

// A registration's flow is its connection, not the address it came from:
// once alice's connection has closed, a new connection from the same
// address and port (another user on a shared host, or behind a NAT that
// hands the port out again) must not receive her requests. It did: the
// binding named the address only.
func TestFlowIsTheConnection(t *testing.T) {
	s, roots := users(t, "sip:alice@example.test", "sip:carol@example.test")
	pipe := siptest.NewPipe(t, s.UsersAddr()) // so that her connection can be cut for sure
	aliceUA := siptest.New(t, pipe.Addr(), roots)
	if res := aliceUA.Register("sip:alice@example.test", "alice", alicePW, "<sip:alice@127.0.0.1:7100;transport=tls>"); res.StatusCode != 200 {
		t.Fatalf("alice: %d", res.StatusCode)
	}
	bs, err := s.Store().Bindings(context.Background(), "sip:alice@example.test", time.Now())
	if err != nil || len(bs) != 1 {
		t.Fatalf("bindings: %v %v", bs, err)
	}
	_, flow, _ := strings.Cut(bs[0].Source, ":")
	pipe.Cut() // her connection ends
	time.Sleep(100 * time.Millisecond)
	squatter := siptest.Squat(t, sipnode.FlowAddr(flow), s.UsersAddr(), roots)
	carol := siptest.New(t, s.UsersAddr(), roots)
	res := carol.Message("sip:carol@example.test", "carol", alicePW, "sip:alice@example.test", "for alice only")
	if line := squatter.Got(300 * time.Millisecond); line != "" {
		t.Fatalf("a new connection from alice's old address got %q (carol's IM: %d)", strings.TrimSpace(line), res.StatusCode)
	}
	if res.StatusCode != 480 {
		t.Fatalf("IM to alice, whose connection is gone: %d, want 480", res.StatusCode)
	}
}
