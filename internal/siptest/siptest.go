// Package siptest is a SIP user agent for tests: it registers, sends IMs
// and collects the ones it receives, over TLS, answering digest challenges.
package siptest

import (
	"context"
	"crypto/tls"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// UA is one user agent connected to a server (Dest) over TLS.
type UA struct {
	T      testing.TB
	UA     *sipgo.UserAgent
	Client *sipgo.Client
	Server *sipgo.Server
	Dest   string
	callID string
	cseq   uint32

	mu       sync.Mutex
	Received []*sip.Request // MESSAGEs received (answered 200)
	finals   sync.Map       // Call-ID → chan *sip.Response: final responses to its INVITEs (watchFinals)
}

// New makes a UA that sends to dest with tls (RootCAs and ServerName set).
func New(t testing.TB, dest string, conf *tls.Config) *UA {
	t.Helper()
	quiet := slog.New(slog.DiscardHandler)
	ua, err := sipgo.NewUA(sipgo.WithUserAgenTLSConfig(conf), sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(quiet)))
	if err != nil {
		t.Fatal(err)
	}
	cl, err := sipgo.NewClient(ua, sipgo.WithClientHostname("127.0.0.1"), sipgo.WithClientLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	u := &UA{T: t, UA: ua, Client: cl, Server: srv, Dest: dest, callID: sip.GenerateTagN(16)}
	ua.TransportLayer().OnMessage(u.watchFinals)
	srv.OnMessage(func(req *sip.Request, tx sip.ServerTransaction) {
		u.mu.Lock()
		u.Received = append(u.Received, req)
		u.mu.Unlock()
		_ = tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
	})
	t.Cleanup(func() { ua.Close() })
	return u
}

// watchFinals passes final responses to INVITEs of a watched call (Watch)
// on, as they come off the connection. sipgo's transactions cannot show a
// 2xx that follows a 487 (RFC 3261 §9.1, a 2xx that crossed a CANCEL): an
// INVITE transaction ends with its 487, and one that has not ended yet
// drops the 2xx; its goroutines may even see the two in either order.
func (u *UA) watchFinals(m sip.Message) {
	res, ok := m.(*sip.Response)
	if !ok || res.StatusCode < 200 {
		return
	}
	if cseq := res.CSeq(); cseq == nil || cseq.MethodName != sip.INVITE {
		return
	}
	if id := res.CallID(); id != nil {
		if ch, ok := u.finals.Load(id.Value()); ok {
			select {
			case ch.(chan *sip.Response) <- res:
			default:
			}
		}
	}
}

// Watch returns the final responses to the INVITEs of call callID, in the
// order they arrive, until stop is called.
func (u *UA) Watch(callID string) (finals <-chan *sip.Response, stop func()) {
	ch := make(chan *sip.Response, 16)
	u.finals.Store(callID, ch)
	return ch, func() { u.finals.Delete(callID) }
}

func uri(t testing.TB, s string) sip.Uri {
	var u sip.Uri
	if err := sip.ParseUri(s, &u); err != nil {
		t.Fatal(err)
	}
	return u
}

// do sends req, answering a 401/407 with username and password (if given).
func (u *UA) do(req *sip.Request, username, password string) *sip.Response {
	u.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := u.Client.Do(ctx, req)
	if err != nil {
		u.T.Fatal(err)
	}
	if (res.StatusCode == 401 || res.StatusCode == 407) && password != "" {
		if res, err = u.Client.DoDigestAuth(ctx, req, res, sipgo.DigestAuth{Username: username, Password: password}); err != nil {
			u.T.Fatal(err)
		}
	}
	return res
}

// Register registers contacts for aor (none: a query).
func (u *UA) Register(aor, username, password string, contacts ...string) *sip.Response {
	u.T.Helper()
	res, _ := u.RegisterWith(aor, username, password, contacts)
	return res
}

// RegisterWith is Register with extra headers; it also returns the last
// request sent (the authenticated one, after a challenge).
func (u *UA) RegisterWith(aor, username, password string, contacts []string, extra ...sip.Header) (*sip.Response, *sip.Request) {
	u.T.Helper()
	a := uri(u.T, aor)
	req := sip.NewRequest(sip.REGISTER, sip.Uri{Scheme: "sip", Host: a.Host, UriParams: sip.HeaderParams{{K: "transport", V: "tls"}}})
	req.SetDestination(u.Dest)
	req.AppendHeader(&sip.ToHeader{Address: a})
	req.AppendHeader(&sip.FromHeader{Address: a, Params: sip.HeaderParams{{K: "tag", V: sip.GenerateTagN(8)}}})
	callID := sip.CallIDHeader(u.callID)
	req.AppendHeader(&callID)
	u.cseq += 2 // a challenge answer uses the next number
	req.AppendHeader(&sip.CSeqHeader{SeqNo: u.cseq, MethodName: sip.REGISTER})
	for _, c := range contacts {
		req.AppendHeader(sip.NewHeader("Contact", c))
	}
	for _, h := range extra {
		req.AppendHeader(h)
	}
	return u.do(req, username, password), req
}

// Message sends an IM from `from` to `to`, with extra headers.
func (u *UA) Message(from, username, password, to, text string, extra ...sip.Header) *sip.Response {
	u.T.Helper()
	req := u.newRequest(sip.MESSAGE, from, to)
	req.AppendHeader(sip.NewHeader("Content-Type", "text/plain"))
	for _, h := range extra {
		req.AppendHeader(h)
	}
	req.SetBody([]byte(text))
	return u.do(req, username, password)
}

// Service sends a SERVICE request (the MRAS request for TURN credentials,
// C3P to a focus factory) with a body of contentType, with credentials.
func (u *UA) Service(from, username, password, to, contentType, body string) *sip.Response {
	u.T.Helper()
	req := u.newRequest("SERVICE", from, to)
	req.AppendHeader(sip.NewHeader("Content-Type", contentType))
	req.SetBody([]byte(body))
	return u.do(req, username, password)
}

// MessageTyped sends an IM with any content type and body, without
// credentials (as a partner's edge would).
func (u *UA) MessageTyped(from, to, contentType, body string) *sip.Response {
	u.T.Helper()
	return u.typed(sip.MESSAGE, from, to, contentType, body)
}

// InviteTyped sends an INVITE offer (no dialog follows: for refusals).
func (u *UA) InviteTyped(from, to, contentType, body string) *sip.Response {
	u.T.Helper()
	return u.typed(sip.INVITE, from, to, contentType, body)
}

func (u *UA) typed(method sip.RequestMethod, from, to, contentType, body string) *sip.Response {
	req := u.newRequest(method, from, to)
	req.AppendHeader(sip.NewHeader("Content-Type", contentType))
	if method == sip.INVITE {
		req.AppendHeader(sip.NewHeader("Contact", "<"+from+";transport=tls>"))
	}
	req.SetBody([]byte(body))
	return u.do(req, "", "")
}

// RequestAuth sends any out-of-dialog request to `to` (no body),
// answering a challenge as username.
func (u *UA) RequestAuth(method sip.RequestMethod, from, username, password, to string) *sip.Response {
	u.T.Helper()
	return u.do(u.newRequest(method, from, to), username, password)
}

// Request sends any out-of-dialog request to `to` (no body).
func (u *UA) Request(method sip.RequestMethod, from, to string) *sip.Response {
	u.T.Helper()
	return u.do(u.newRequest(method, from, to), "", "")
}

// Forged sends a request without credentials from `from` to `to`, with a
// To tag and a Call-ID of the sender's choosing ("": none, and a new one)
// and extra headers: what anyone can put on the wire.
func (u *UA) Forged(method sip.RequestMethod, from, to, toTag, callID, body string, extra ...sip.Header) *sip.Response {
	u.T.Helper()
	return u.ForgedAs("", "", method, from, to, toTag, callID, body, extra...)
}

// ForgedAs is Forged answering a digest challenge as username.
func (u *UA) ForgedAs(username, password string, method sip.RequestMethod, from, to, toTag, callID, body string, extra ...sip.Header) *sip.Response {
	u.T.Helper()
	req := u.newRequest(method, from, to)
	if toTag != "" {
		req.To().Params.Add("tag", toTag)
	}
	if callID != "" {
		id := sip.CallIDHeader(callID)
		req.AppendHeader(&id)
	}
	for _, h := range extra {
		req.AppendHeader(h)
	}
	if body != "" {
		req.AppendHeader(sip.NewHeader("Content-Type", "text/plain"))
		req.SetBody([]byte(body))
	}
	return u.do(req, username, password)
}

// NewRequest is an out-of-dialog request from `from` to `to`, for a test
// to shape (tags, Call-ID, headers) before Send.
func (u *UA) NewRequest(method sip.RequestMethod, from, to string) *sip.Request {
	u.T.Helper()
	return u.newRequest(method, from, to)
}

// Send sends req, answering a digest challenge as username ("": none).
func (u *UA) Send(req *sip.Request, username, password string) *sip.Response {
	u.T.Helper()
	return u.do(req, username, password)
}

// newRequest is an out-of-dialog request from `from` to `to` over TLS,
// addressed to the UA's server.
func (u *UA) newRequest(method sip.RequestMethod, from, to string) *sip.Request {
	u.T.Helper()
	target := uri(u.T, to)
	target.UriParams = append(target.UriParams, sip.HeaderKV{K: "transport", V: "tls"}) // after the URI's own (a conference's gruu, opaque)
	req := sip.NewRequest(method, target)
	req.SetDestination(u.Dest)
	req.AppendHeader(&sip.FromHeader{Address: uri(u.T, from), Params: sip.HeaderParams{{K: "tag", V: sip.GenerateTagN(8)}}})
	req.AppendHeader(&sip.ToHeader{Address: uri(u.T, to)})
	return req
}

// WaitMessages waits up to d for n received MESSAGEs and returns them.
func (u *UA) WaitMessages(n int, d time.Duration) []*sip.Request {
	deadline := time.Now().Add(d)
	for {
		u.mu.Lock()
		got := append([]*sip.Request(nil), u.Received...)
		u.mu.Unlock()
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}
