package core_test

import (
	"context"
	"crypto/tls"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"portcullis/core"
	"portcullis/internal/siptest"
)

const alicePW = "correct horse battery"

func contactsOf(res *sip.Response) []string {
	var out []string
	for _, h := range res.GetHeaders("Contact") {
		out = append(out, h.Value())
	}
	return out
}

// users starts a core with the given users (password alicePW) and returns
// it and the TLS settings of a client of its users listener.
func users(t *testing.T, aors ...string) (*core.Server, *tls.Config) {
	t.Helper()
	s, pki, _ := startCore(t)
	for _, aor := range aors {
		if err := core.AddUser(context.Background(), s.Store(), aor, alicePW); err != nil {
			t.Fatal(err)
		}
	}
	return s, &tls.Config{RootCAs: accesstestRoots(t, pki), ServerName: "core1.internal", MinVersion: tls.VersionTLS12}
}

func TestRegistrar(t *testing.T) {
	s, roots := users(t, "sip:alice@example.test", "sip:bob@example.test")
	ua := func() *siptest.UA { return siptest.New(t, s.UsersAddr(), roots) }
	phone := ua()

	// No credentials: 401 with SHA-256 first, then MD5.
	res := phone.Register("sip:alice@example.test", "alice", "", "<sip:alice@127.0.0.1:5999;transport=tls>")
	chals := res.GetHeaders("WWW-Authenticate")
	if res.StatusCode != 401 || len(chals) != 2 || !strings.Contains(chals[0].Value(), "SHA-256") || !strings.Contains(chals[1].Value(), "MD5") {
		t.Fatalf("challenge: %d %v", res.StatusCode, chals)
	}
	res = phone.Register("sip:alice@example.test", "alice", alicePW, "<sip:alice@127.0.0.1:5999;transport=tls>")
	if res.StatusCode != 200 || len(contactsOf(res)) != 1 || !strings.Contains(contactsOf(res)[0], "expires=3600") {
		t.Fatalf("register: %d %v", res.StatusCode, contactsOf(res))
	}
	// A second device: its own binding beside the first.
	res = ua().Register("sip:alice@example.test", "alice", alicePW, "<sip:alice@127.0.0.1:6000;transport=tls>;expires=600")
	if res.StatusCode != 200 || len(contactsOf(res)) != 2 {
		t.Fatalf("second device: %d %v", res.StatusCode, contactsOf(res))
	}

	for _, tc := range []struct {
		name, aor, user, pw string
		contacts            []string
		want                int
	}{
		{"wrong password", "sip:alice@example.test", "alice", "not the password", nil, 401},
		{"unknown user", "sip:mallory@example.test", "mallory", alicePW, nil, 401},
		{"another user's AOR", "sip:bob@example.test", "alice", alicePW, nil, 403},
		{"foreign domain", "sip:alice@elsewhere.test", "alice", alicePW, nil, 403},
		{"interval too brief", "sip:alice@example.test", "alice", alicePW, []string{"<sip:alice@127.0.0.1:6001>;expires=1"}, 423},
		{"bad wildcard", "sip:alice@example.test", "alice", alicePW, []string{"*"}, 400},
	} {
		res := ua().Register(tc.aor, tc.user, tc.pw, tc.contacts...)
		if res.StatusCode != tc.want {
			t.Errorf("%s: %d %s, want %d", tc.name, res.StatusCode, res.Reason, tc.want)
		}
		if tc.want == 423 && res.GetHeader("Min-Expires") == nil {
			t.Errorf("423 without Min-Expires")
		}
	}

	// A replayed Authorization (same nonce and nonce count) is refused.
	replay := ua()
	ok, req := replay.RegisterWith("sip:alice@example.test", "alice", alicePW, nil)
	if ok.StatusCode != 200 {
		t.Fatalf("authorized query: %d", ok.StatusCode)
	}
	again := req.Clone()
	again.CSeq().SeqNo++
	again.RemoveHeader("Via")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := replay.Client.Do(ctx, again, sipgo.ClientRequestAddVia)
	if err != nil || res.StatusCode != 401 {
		t.Fatalf("replayed credentials: %v %v", res, err)
	}

	// Unregister one contact, then all with "*".
	res = phone.Register("sip:alice@example.test", "alice", alicePW, "<sip:alice@127.0.0.1:5999;transport=tls>;expires=0")
	if res.StatusCode != 200 || len(contactsOf(res)) != 1 || !strings.Contains(contactsOf(res)[0], ":6000") {
		t.Fatalf("unregister one: %d %v", res.StatusCode, contactsOf(res))
	}
	res, _ = phone.RegisterWith("sip:alice@example.test", "alice", alicePW, []string{"*"}, sip.NewHeader("Expires", "0"))
	if res.StatusCode != 200 || len(contactsOf(res)) != 0 {
		t.Fatalf("unregister all: %d %v", res.StatusCode, contactsOf(res))
	}

	// A binding ends at its expiry.
	res = phone.Register("sip:alice@example.test", "alice", alicePW, "<sip:alice@127.0.0.1:7000>;expires=2")
	if res.StatusCode != 200 || len(contactsOf(res)) != 1 {
		t.Fatalf("short binding: %d %v", res.StatusCode, contactsOf(res))
	}
	time.Sleep(2100 * time.Millisecond)
	if res = phone.Register("sip:alice@example.test", "alice", alicePW); len(contactsOf(res)) != 0 {
		t.Fatalf("expired binding still listed: %v", contactsOf(res))
	}

	// A disabled account cannot register.
	if err := s.Store().SetDisabled(context.Background(), "sip:bob@example.test", true); err != nil {
		t.Fatal(err)
	}
	if res := ua().Register("sip:bob@example.test", "bob", alicePW); res.StatusCode != 403 {
		t.Fatalf("disabled: %d", res.StatusCode)
	}
}

// An address of record has at most registrar.max_contacts bindings (10 by
// default). A REGISTER past it drops the binding that expires soonest
// (a client that comes back with a new contact is not locked out); one
// naming more contacts than that by itself is refused 403 and changes
// nothing; a refresh at the cap goes through.
func TestRegistrarMaxContacts(t *testing.T) {
	s, roots := users(t, "sip:alice@example.test")
	ua := siptest.New(t, s.UsersAddr(), roots)
	contact := func(i int) string { return "<sip:alice@127.0.0.1:" + strconv.Itoa(6000+i) + ";transport=tls>" }
	var ten []string
	for i := range 10 {
		ten = append(ten, contact(i)+";expires="+strconv.Itoa(600+10*i)) // contact 0 expires first
	}
	bound := func(res *sip.Response) string { return strings.Join(contactsOf(res), " ") }
	if res := ua.Register("sip:alice@example.test", "alice", alicePW, ten...); res.StatusCode != 200 || len(contactsOf(res)) != 10 {
		t.Fatalf("ten contacts: %d %v", res.StatusCode, contactsOf(res))
	}
	res := ua.Register("sip:alice@example.test", "alice", alicePW, contact(10))
	if res.StatusCode != 200 || len(contactsOf(res)) != 10 || strings.Contains(bound(res), ":6000;") || !strings.Contains(bound(res), ":6010;") {
		t.Fatalf("an eleventh contact: %d %v (want the one expiring first dropped)", res.StatusCode, contactsOf(res))
	}
	var eleven []string
	for i := 20; i < 31; i++ {
		eleven = append(eleven, contact(i))
	}
	if res := ua.Register("sip:alice@example.test", "alice", alicePW, eleven...); res.StatusCode != 403 || !strings.Contains(res.Reason, "10 contacts") {
		t.Fatalf("eleven contacts in one REGISTER: %d %s", res.StatusCode, res.Reason)
	}
	if res := ua.Register("sip:alice@example.test", "alice", alicePW, contact(3)); res.StatusCode != 200 || len(contactsOf(res)) != 10 || !strings.Contains(bound(res), ":6010;") {
		t.Fatalf("a refresh at the cap (the refused REGISTER changed nothing): %d %v", res.StatusCode, contactsOf(res))
	}
}

// REGISTERs of one address of record arriving together, each adding a new
// contact at the cap, leave exactly max_contacts bindings: each makes room
// for itself in turn. Read and checked side by side, they all dropped the
// same binding and the AOR ended over the cap.
func TestRegistrarMaxContactsConcurrent(t *testing.T) {
	s, roots := users(t, "sip:alice@example.test")
	first := siptest.New(t, s.UsersAddr(), roots)
	contact := func(i int) string { return "<sip:alice@127.0.0.1:" + strconv.Itoa(7000+i) + ";transport=tls>" }
	var ten []string
	for i := range 10 {
		ten = append(ten, contact(i))
	}
	if res := first.Register("sip:alice@example.test", "alice", alicePW, ten...); res.StatusCode != 200 {
		t.Fatalf("ten contacts: %d", res.StatusCode)
	}
	const n = 16
	uas := make([]*siptest.UA, n)
	for i := range uas {
		uas[i] = siptest.New(t, s.UsersAddr(), roots)
		// A first request each, so that the REGISTERs below do not wait
		// for a TLS handshake or a challenge.
		if res := uas[i].Register("sip:alice@example.test", "alice", alicePW); res.StatusCode != 200 {
			t.Fatalf("query %d: %d", i, res.StatusCode)
		}
	}
	var wg sync.WaitGroup
	codes := make([]int, n)
	for i, ua := range uas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i] = ua.Register("sip:alice@example.test", "alice", alicePW, contact(100+i)).StatusCode
		}()
	}
	wg.Wait()
	for i, c := range codes {
		if c != 200 {
			t.Errorf("REGISTER %d: %d", i, c)
		}
	}
	if res := first.Register("sip:alice@example.test", "alice", alicePW); len(contactsOf(res)) != 10 {
		t.Fatalf("%d bindings after %d REGISTERs at once, want 10: %v", len(contactsOf(res)), n, contactsOf(res))
	}
}
