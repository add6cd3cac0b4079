package core_test

import (
	"context"
	"crypto/tls"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"portcullis/core"
)

// inbox collects the MESSAGEs a user agent receives and answers them 200.
type inbox struct {
	mu   sync.Mutex
	msgs []string
}

func (b *inbox) serve(u *sipUser) {
	u.server.OnMessage(func(req *sip.Request, tx sip.ServerTransaction) {
		b.mu.Lock()
		b.msgs = append(b.msgs, string(req.Body()))
		b.mu.Unlock()
		_ = tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
	})
}

func (b *inbox) wait(t *testing.T, n int) []string { return b.waitFor(t, n, 5*time.Second) }

// waitFor waits up to d for n messages and returns what arrived.
func (b *inbox) waitFor(t *testing.T, n int, d time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		b.mu.Lock()
		got := append([]string(nil), b.msgs...)
		b.mu.Unlock()
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// message sends a MESSAGE from `from` to `to` through the core, answering a
// 407 with the password.
func (u *sipUser) message(from, username, password, to, text string, extra ...sip.Header) *sip.Response {
	u.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var fromURI, toURI sip.Uri
	if err := sip.ParseUri(from, &fromURI); err != nil {
		u.t.Fatal(err)
	}
	if err := sip.ParseUri(to, &toURI); err != nil {
		u.t.Fatal(err)
	}
	target := toURI
	target.UriParams = sip.HeaderParams{{K: "transport", V: "tls"}}
	req := sip.NewRequest(sip.MESSAGE, target)
	req.SetDestination(u.dest)
	req.AppendHeader(&sip.FromHeader{Address: fromURI, Params: sip.HeaderParams{{K: "tag", V: sip.GenerateTagN(8)}}})
	req.AppendHeader(&sip.ToHeader{Address: toURI})
	req.AppendHeader(sip.NewHeader("Content-Type", "text/plain"))
	for _, h := range extra {
		req.AppendHeader(h)
	}
	req.SetBody([]byte(text))
	res, err := u.client.Do(ctx, req)
	if err != nil {
		u.t.Fatal(err)
	}
	if res.StatusCode == 407 && password != "" {
		if res, err = u.client.DoDigestAuth(ctx, req, res, sipgo.DigestAuth{Username: username, Password: password}); err != nil {
			u.t.Fatal(err)
		}
	}
	return res
}

func TestProxyMessage(t *testing.T) {
	s, pki, _ := startCore(t)
	ctx := context.Background()
	for _, aor := range []string{"sip:alice@example.test", "sip:bob@example.test", "sip:carol@example.test"} {
		if err := core.AddUser(ctx, s.Store(), aor, alicePW); err != nil {
			t.Fatal(err)
		}
	}
	roots := &tls.Config{RootCAs: accesstestRoots(t, pki), ServerName: "core1.internal", MinVersion: tls.VersionTLS12}

	// Bob has two devices; both receive, the first 200 answers the sender.
	var bobPhone, bobLaptop inbox
	for i, box := range []*inbox{&bobPhone, &bobLaptop} {
		dev := newSIPUser(t, s, roots)
		box.serve(dev)
		contact := "<sip:bob@127.0.0.1:" + []string{"7001", "7002"}[i] + ";transport=tls>"
		if res := dev.register("sip:bob@example.test", "bob", alicePW, []string{contact}); res.StatusCode != 200 {
			t.Fatalf("bob device %d: %d", i, res.StatusCode)
		}
	}
	alice := newSIPUser(t, s, roots)
	var aliceBox inbox
	aliceBox.serve(alice)
	if res := alice.register("sip:alice@example.test", "alice", alicePW, []string{"<sip:alice@127.0.0.1:7003;transport=tls>"}); res.StatusCode != 200 {
		t.Fatal("alice register")
	}

	// Unauthenticated: 407 with Proxy-Authenticate, nothing delivered.
	res := alice.message("sip:alice@example.test", "alice", "", "sip:bob@example.test", "no credentials")
	if res.StatusCode != 407 || res.GetHeader("Proxy-Authenticate") == nil {
		t.Fatalf("unauthenticated: %d", res.StatusCode)
	}
	res = alice.message("sip:alice@example.test", "alice", alicePW, "sip:bob@example.test", "hello bob")
	if res.StatusCode != 200 {
		t.Fatalf("MESSAGE: %d %s", res.StatusCode, res.Reason)
	}
	for name, box := range map[string]*inbox{"phone": &bobPhone, "laptop": &bobLaptop} {
		if got := box.wait(t, 1); len(got) != 1 || got[0] != "hello bob" {
			t.Fatalf("bob's %s got %q", name, got)
		}
	}
	// And back: bob to alice, from a device that registered.
	bobAgain := newSIPUser(t, s, roots)
	if res := bobAgain.message("sip:bob@example.test", "bob", alicePW, "sip:alice@example.test", "hi alice"); res.StatusCode != 200 {
		t.Fatalf("reply: %d", res.StatusCode)
	}
	if got := aliceBox.wait(t, 1); len(got) != 1 || got[0] != "hi alice" {
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
		res := newSIPUser(t, s, roots).message(tc.from, tc.user, tc.pw, tc.to, "x", tc.extra...)
		if res.StatusCode != tc.want {
			t.Errorf("%s: %d %s, want %d", tc.name, res.StatusCode, res.Reason, tc.want)
		}
	}
	if got := bobPhone.waitFor(t, 2, 300*time.Millisecond); len(got) != 1 {
		t.Fatalf("refused messages reached bob: %q", got)
	}
	if strings.Contains(strings.Join(aliceBox.waitFor(t, 2, 100*time.Millisecond), ""), "x") {
		t.Fatal("a refused message reached alice")
	}
}
