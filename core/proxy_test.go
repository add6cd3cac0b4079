package core_test

import (
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"portcullis/internal/siptest"
)

func bodies(rs []*sip.Request) []string {
	var out []string
	for _, r := range rs {
		out = append(out, string(r.Body()))
	}
	return out
}

func TestProxyMessage(t *testing.T) {
	s, roots := users(t, "sip:alice@example.test", "sip:bob@example.test", "sip:carol@example.test")
	ua := func() *siptest.UA { return siptest.New(t, s.UsersAddr(), roots) }

	// Bob has two devices; both receive, the first 200 answers the sender.
	phone, laptop := ua(), ua()
	for i, dev := range []*siptest.UA{phone, laptop} {
		contact := "<sip:bob@127.0.0.1:" + []string{"7001", "7002"}[i] + ";transport=tls>"
		if res := dev.Register("sip:bob@example.test", "bob", alicePW, contact); res.StatusCode != 200 {
			t.Fatalf("bob device %d: %d", i, res.StatusCode)
		}
	}
	alice := ua()
	if res := alice.Register("sip:alice@example.test", "alice", alicePW, "<sip:alice@127.0.0.1:7003;transport=tls>"); res.StatusCode != 200 {
		t.Fatal("alice register")
	}

	// Unauthenticated: 407 with Proxy-Authenticate, nothing delivered.
	res := alice.Message("sip:alice@example.test", "alice", "", "sip:bob@example.test", "no credentials")
	if res.StatusCode != 407 || res.GetHeader("Proxy-Authenticate") == nil {
		t.Fatalf("unauthenticated: %d", res.StatusCode)
	}
	if res = alice.Message("sip:alice@example.test", "alice", alicePW, "sip:bob@example.test", "hello bob"); res.StatusCode != 200 {
		t.Fatalf("MESSAGE: %d %s", res.StatusCode, res.Reason)
	}
	for name, dev := range map[string]*siptest.UA{"phone": phone, "laptop": laptop} {
		if got := bodies(dev.WaitMessages(1, 5*time.Second)); len(got) != 1 || got[0] != "hello bob" {
			t.Fatalf("bob's %s got %q", name, got)
		}
	}
	// And back: bob to alice, from a device that never registered.
	if res := ua().Message("sip:bob@example.test", "bob", alicePW, "sip:alice@example.test", "hi alice"); res.StatusCode != 200 {
		t.Fatalf("reply: %d", res.StatusCode)
	}
	if got := bodies(alice.WaitMessages(1, 5*time.Second)); len(got) != 1 || got[0] != "hi alice" {
		t.Fatalf("alice got %q", got)
	}

	for _, tc := range []struct {
		name, from, user, pw, to string
		extra                    []sip.Header
		want                     int
	}{
		{"wrong password", "sip:alice@example.test", "alice", "not the password", "sip:bob@example.test", nil, 407},
		{"spoofed From", "sip:bob@example.test", "alice", alicePW, "sip:carol@example.test", nil, 403},
		{"unknown target", "sip:alice@example.test", "alice", alicePW, "sip:nobody@example.test", nil, 404},
		{"no binding", "sip:alice@example.test", "alice", alicePW, "sip:carol@example.test", nil, 480},
		{"foreign domain", "sip:alice@example.test", "alice", alicePW, "sip:bob@elsewhere.test", nil, 403},
		{"hop limit", "sip:alice@example.test", "alice", alicePW, "sip:bob@example.test", []sip.Header{sip.NewHeader("Max-Forwards", "0")}, 483},
	} {
		if res := ua().Message(tc.from, tc.user, tc.pw, tc.to, "x", tc.extra...); res.StatusCode != tc.want {
			t.Errorf("%s: %d %s, want %d", tc.name, res.StatusCode, res.Reason, tc.want)
		}
	}
	if got := phone.WaitMessages(2, 300*time.Millisecond); len(got) != 1 {
		t.Fatalf("refused messages reached bob: %q", bodies(got))
	}
	if got := alice.WaitMessages(2, 100*time.Millisecond); len(got) != 1 {
		t.Fatalf("a refused message reached alice: %q", bodies(got))
	}
}
