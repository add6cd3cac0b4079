package core_test

import (
	"context"
	"crypto/tls"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"portcullis/core"
)

// sipUser is a SIP client over TLS to the core's user listener.
type sipUser struct {
	t      *testing.T
	ua     *sipgo.UserAgent
	client *sipgo.Client
	server *sipgo.Server
	dest   string
	callID string
	cseq   uint32
}

func newSIPUser(t *testing.T, s *core.Server, roots *tls.Config) *sipUser {
	t.Helper()
	ua, err := sipgo.NewUA(sipgo.WithUserAgenTLSConfig(roots), sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(slog.New(slog.DiscardHandler))))
	if err != nil {
		t.Fatal(err)
	}
	cl, err := sipgo.NewClient(ua, sipgo.WithClientHostname("127.0.0.1"), sipgo.WithClientLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ua.Close() })
	return &sipUser{t: t, ua: ua, client: cl, server: srv, dest: s.UsersAddr(), callID: sip.GenerateTagN(16)}
}

// register sends a REGISTER for aor with the given Contact header values
// (none: a query) and extra headers, answering a challenge with password.
func (u *sipUser) register(aor, username, password string, contacts []string, extra ...sip.Header) *sip.Response {
	u.t.Helper()
	res, _ := u.registerReq(aor, username, password, contacts, extra...)
	return res
}

// registerReq is register that also returns the last request sent.
func (u *sipUser) registerReq(aor, username, password string, contacts []string, extra ...sip.Header) (*sip.Response, *sip.Request) {
	u.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var aorURI sip.Uri
	if err := sip.ParseUri(aor, &aorURI); err != nil {
		u.t.Fatal(err)
	}
	req := sip.NewRequest(sip.REGISTER, sip.Uri{Scheme: "sip", Host: aorURI.Host, UriParams: sip.HeaderParams{{K: "transport", V: "tls"}}})
	req.SetDestination(u.dest)
	req.AppendHeader(&sip.ToHeader{Address: aorURI})
	req.AppendHeader(&sip.FromHeader{Address: aorURI, Params: sip.HeaderParams{{K: "tag", V: sip.GenerateTagN(8)}}})
	callID := sip.CallIDHeader(u.callID)
	req.AppendHeader(&callID)
	u.cseq++
	req.AppendHeader(&sip.CSeqHeader{SeqNo: u.cseq, MethodName: sip.REGISTER})
	for _, c := range contacts {
		req.AppendHeader(sip.NewHeader("Contact", c))
	}
	for _, h := range extra {
		req.AppendHeader(h)
	}
	res, err := u.client.Do(ctx, req)
	if err != nil {
		u.t.Fatal(err)
	}
	if res.StatusCode != 401 || password == "" {
		return res, req
	}
	res, err = u.client.DoDigestAuth(ctx, req, res, sipgo.DigestAuth{Username: username, Password: password})
	if err != nil {
		u.t.Fatal(err)
	}
	u.cseq++ // DoDigestAuth sent CSeq+1
	return res, req
}

func contactsOf(res *sip.Response) []string {
	var out []string
	for _, h := range res.GetHeaders("Contact") {
		out = append(out, h.Value())
	}
	return out
}

const alicePW = "correct horse battery"

func TestRegistrar(t *testing.T) {
	s, pki, _ := startCore(t)
	ctx := context.Background()
	for _, aor := range []string{"sip:alice@example.test", "sip:bob@example.test"} {
		if err := core.AddUser(ctx, s.Store(), aor, alicePW); err != nil {
			t.Fatal(err)
		}
	}
	roots := &tls.Config{RootCAs: accesstestRoots(t, pki), ServerName: "core1.internal", MinVersion: tls.VersionTLS12}
	phone := newSIPUser(t, s, roots)

	// No credentials: 401 with SHA-256 first, then MD5.
	res := phone.register("sip:alice@example.test", "alice", "", []string{"<sip:alice@127.0.0.1:5999;transport=tls>"})
	chals := res.GetHeaders("WWW-Authenticate")
	if res.StatusCode != 401 || len(chals) != 2 || !strings.Contains(chals[0].Value(), "SHA-256") || !strings.Contains(chals[1].Value(), "MD5") {
		t.Fatalf("challenge: %d %v", res.StatusCode, chals)
	}
	res = phone.register("sip:alice@example.test", "alice", alicePW, []string{"<sip:alice@127.0.0.1:5999;transport=tls>"})
	if res.StatusCode != 200 || len(contactsOf(res)) != 1 || !strings.Contains(contactsOf(res)[0], "expires=3600") {
		t.Fatalf("register: %d %v", res.StatusCode, contactsOf(res))
	}
	// A second device: its own binding beside the first.
	laptop := newSIPUser(t, s, roots)
	res = laptop.register("sip:alice@example.test", "alice", alicePW, []string{"<sip:alice@127.0.0.1:6000;transport=tls>;expires=600"})
	if res.StatusCode != 200 || len(contactsOf(res)) != 2 {
		t.Fatalf("second device: %d %v", res.StatusCode, contactsOf(res))
	}

	for _, tc := range []struct {
		name, aor, user, pw string
		contacts            []string
		extra               []sip.Header
		want                int
	}{
		{"wrong password", "sip:alice@example.test", "alice", "not the password", nil, nil, 401},
		{"unknown user", "sip:mallory@example.test", "mallory", alicePW, nil, nil, 401},
		{"another user's AOR", "sip:bob@example.test", "alice", alicePW, nil, nil, 403},
		{"foreign domain", "sip:alice@elsewhere.test", "alice", alicePW, nil, nil, 403},
		{"interval too brief", "sip:alice@example.test", "alice", alicePW, []string{"<sip:alice@127.0.0.1:6001>;expires=1"}, nil, 423},
		{"bad wildcard", "sip:alice@example.test", "alice", alicePW, []string{"*"}, nil, 400},
	} {
		res := newSIPUser(t, s, roots).register(tc.aor, tc.user, tc.pw, tc.contacts, tc.extra...)
		if res.StatusCode != tc.want {
			t.Errorf("%s: %d %s, want %d", tc.name, res.StatusCode, res.Reason, tc.want)
		}
		if tc.want == 423 && res.GetHeader("Min-Expires") == nil {
			t.Errorf("423 without Min-Expires")
		}
	}

	// A replayed Authorization (same nonce and nonce count) is refused.
	replay := newSIPUser(t, s, roots)
	ok, req := replay.registerReq("sip:alice@example.test", "alice", alicePW, nil)
	if ok.StatusCode != 200 {
		t.Fatalf("authorized query: %d", ok.StatusCode)
	}
	again := req.Clone()
	again.CSeq().SeqNo++
	again.RemoveHeader("Via")
	ctx2, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := replay.client.Do(ctx2, again, sipgo.ClientRequestAddVia)
	if err != nil || res.StatusCode != 401 {
		t.Fatalf("replayed credentials: %v %v", res, err)
	}

	// Unregister one contact, then all with "*".
	res = phone.register("sip:alice@example.test", "alice", alicePW, []string{"<sip:alice@127.0.0.1:5999;transport=tls>;expires=0"})
	if res.StatusCode != 200 || len(contactsOf(res)) != 1 || !strings.Contains(contactsOf(res)[0], ":6000") {
		t.Fatalf("unregister one: %d %v", res.StatusCode, contactsOf(res))
	}
	res = phone.register("sip:alice@example.test", "alice", alicePW, []string{"*"}, sip.NewHeader("Expires", "0"))
	if res.StatusCode != 200 || len(contactsOf(res)) != 0 {
		t.Fatalf("unregister all: %d %v", res.StatusCode, contactsOf(res))
	}

	// A binding ends at its expiry.
	res = phone.register("sip:alice@example.test", "alice", alicePW, []string{"<sip:alice@127.0.0.1:7000>;expires=2"})
	if res.StatusCode != 200 || len(contactsOf(res)) != 1 {
		t.Fatalf("short binding: %d %v", res.StatusCode, contactsOf(res))
	}
	time.Sleep(2100 * time.Millisecond)
	if res = phone.register("sip:alice@example.test", "alice", alicePW, nil); len(contactsOf(res)) != 0 {
		t.Fatalf("expired binding still listed: %v", contactsOf(res))
	}

	// A disabled account cannot register.
	if err := s.Store().SetDisabled(ctx, "sip:bob@example.test", true); err != nil {
		t.Fatal(err)
	}
	if res := newSIPUser(t, s, roots).register("sip:bob@example.test", "bob", alicePW, nil); res.StatusCode != 403 {
		t.Fatalf("disabled: %d", res.StatusCode)
	}
}
