// Package sipclient is the SIP user agent behind `portcullis client`: it
// connects over TLS, registers, sends IMs and receives them, answering
// digest challenges with the user's password.
package sipclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"portcullis/internal/sipnode"
)

// Options say where and as whom to connect.
type Options struct {
	Server     string // host:port of the edge (or the core's users listener)
	ServerName string // name the server's certificate must carry ("" → host of Server)
	CAFile     string
	AOR        string // sip:alice@example.test (an anonymous guest: sip:<name>@anonymous.invalid)
	Password   string // a guest's is the conference key
	// DisplayName goes in From (an anonymous guest's name in the roster).
	DisplayName string
	// ConferenceRefresh is how often a joined conference's subscription is
	// refreshed; a refresh the Focus no longer knows (a core restart) makes
	// the client join again. Default 60 s.
	ConferenceRefresh time.Duration
	// KeepAlive is how often the client sends an RFC 5626 CRLF keep-alive
	// on its connection (each time at a random 80-100 % of it, §4.4.1), so
	// that a server's idle timeout (the edge's 5 min by default)
	// does not close a connection that only waits for IMs and calls: the
	// registration's flow would go with it. Default 120 s; negative: none.
	KeepAlive time.Duration
}

// defaultTimeout is the unit of the client's own waits.
const defaultTimeout = time.Second

// Client is a connected user agent.
type Client struct {
	o      Options
	aor    sip.Uri
	ua     *sipgo.UserAgent
	cl     *sipgo.Client
	srv    *sipgo.Server
	callID string
	cseq   uint32

	mu    sync.Mutex
	confs []*Conference

	stop     chan struct{} // closed by Close
	stopOnce sync.Once
	pings    sync.WaitGroup
}

// New prepares a client (the connection is made on the first request).
func New(o Options) (*Client, error) {
	var aor sip.Uri
	if err := sip.ParseUri(o.AOR, &aor); err != nil || aor.User == "" {
		return nil, fmt.Errorf("user %q: must be sip:user@domain", o.AOR)
	}
	pem, err := os.ReadFile(o.CAFile)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s: no certificate", o.CAFile)
	}
	host, _, err := net.SplitHostPort(o.Server)
	if err != nil {
		return nil, fmt.Errorf("server %q: %w", o.Server, err)
	}
	name := o.ServerName
	if name == "" {
		name = host
	}
	quiet := slog.New(slog.DiscardHandler)
	// A meeting's full roster can be large (RFC 4575 full state).
	parser := sip.NewParser()
	parser.MaxMessageLength = 4 << 20
	ua, err := sipgo.NewUA(sipgo.WithUserAgent("portcullis-client"), sipgo.WithUserAgentParser(parser), sipgo.WithUserAgentDNSResolver(sipnode.NoDNS),
		sipgo.WithUserAgenTLSConfig(&tls.Config{RootCAs: roots, ServerName: name, MinVersion: tls.VersionTLS12}),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(quiet)))
	if err != nil {
		return nil, err
	}
	cl, err := sipgo.NewClient(ua, sipgo.WithClientHostname("127.0.0.1"), sipgo.WithClientLogger(quiet))
	if err != nil {
		ua.Close()
		return nil, err
	}
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(quiet))
	if err != nil {
		ua.Close()
		return nil, err
	}
	c := &Client{o: o, aor: aor, ua: ua, cl: cl, srv: srv, callID: sip.GenerateTagN(16), stop: make(chan struct{})}
	if every := o.KeepAlive; every >= 0 {
		if every == 0 {
			every = defaultKeepAlive
		}
		c.pings.Go(func() { c.keepAlive(every) })
	}
	return c, nil
}

const defaultKeepAlive = 120 * time.Second

// keepAlive sends a CRLF keep-alive (RFC 5626 §4.4.1) on the connection to
// the server, when there is one, every 80-100 % of every until Close.
func (c *Client) keepAlive(every time.Duration) {
	for {
		wait := every - time.Duration(rand.Int64N(int64(every)/5+1))
		select {
		case <-c.stop:
			return
		case <-time.After(wait):
		}
		// No connection yet (or gone): nothing to keep; the next request
		// makes one.
		c.withConn(func(conn sip.Connection) {
			if w, ok := conn.(io.Writer); ok {
				_, _ = w.Write([]byte("\r\n\r\n"))
			}
		})
	}
}

// Close ends the client's conferences (without signalling) and closes the
// connection.
func (c *Client) Close() error {
	c.stopOnce.Do(func() { close(c.stop) })
	c.pings.Wait()
	c.mu.Lock()
	confs := c.confs
	c.confs = nil
	c.mu.Unlock()
	for _, cf := range confs {
		cf.end("client closed")
	}
	return c.ua.Close()
}

func (c *Client) do(ctx context.Context, req *sip.Request) (*sip.Response, error) {
	res, err := c.cl.Do(ctx, req)
	if err != nil {
		return nil, err
	}
	if res.StatusCode == 401 || res.StatusCode == 407 {
		res, err = c.cl.DoDigestAuth(ctx, req, res, sipgo.DigestAuth{Username: c.aor.User, Password: c.o.Password})
	}
	return res, err
}

// ErrRefused wraps a final response that is not a success.
var ErrRefused = errors.New("refused")

func check(res *sip.Response, err error) (*sip.Response, error) {
	if err != nil {
		return nil, err
	}
	if !res.IsSuccess() {
		return res, fmt.Errorf("%w: %d %s", ErrRefused, res.StatusCode, res.Reason)
	}
	return res, nil
}

// Register binds contact (a sip URI of this client) for expires; 0 removes it.
func (c *Client) Register(ctx context.Context, contact string, expires time.Duration) (*sip.Response, error) {
	req := sip.NewRequest(sip.REGISTER, sip.Uri{Scheme: "sip", Host: c.aor.Host, UriParams: sip.HeaderParams{{K: "transport", V: "tls"}}})
	req.SetDestination(c.o.Server)
	req.AppendHeader(&sip.ToHeader{Address: c.aor})
	req.AppendHeader(&sip.FromHeader{Address: c.aor, Params: sip.HeaderParams{{K: "tag", V: sip.GenerateTagN(8)}}})
	callID := sip.CallIDHeader(c.callID)
	req.AppendHeader(&callID)
	c.cseq += 2 // a challenge answer uses the next number
	req.AppendHeader(&sip.CSeqHeader{SeqNo: c.cseq, MethodName: sip.REGISTER})
	req.AppendHeader(sip.NewHeader("Contact", "<"+contact+">;expires="+strconv.Itoa(int(expires/time.Second))))
	return check(c.do(ctx, req))
}

// Message sends text to `to`.
func (c *Client) Message(ctx context.Context, to, text string) (*sip.Response, error) {
	var target sip.Uri
	if err := sip.ParseUri(to, &target); err != nil || target.User == "" {
		return nil, fmt.Errorf("recipient %q: must be sip:user@domain", to)
	}
	toHdr := target
	target.UriParams = sip.HeaderParams{{K: "transport", V: "tls"}}
	req := sip.NewRequest(sip.MESSAGE, target)
	req.SetDestination(c.o.Server)
	req.AppendHeader(&sip.FromHeader{Address: c.aor, Params: sip.HeaderParams{{K: "tag", V: sip.GenerateTagN(8)}}})
	req.AppendHeader(&sip.ToHeader{Address: toHdr})
	req.AppendHeader(sip.NewHeader("Content-Type", "text/plain;charset=UTF-8"))
	req.SetBody([]byte(text))
	return check(c.do(ctx, req))
}

// IM is a received instant message.
type IM struct {
	From, Text string
}

// Listen registers and delivers incoming IMs to f until ctx ends, then
// unregisters. It refreshes the registration before it expires, and
// registers again at once when its connection goes (RFC 5626 §4.4: the
// registration's flow went with it; a server restart, a network break):
// each second it looks whether the connection is still there. A first
// registration that fails, or a later one the server refuses for good,
// ends Listen with the error; one that finds the server or its next hop
// out of reach (no answer, 408, 480, 5xx) is tried again after 1 s, then
// doubling up to 30 s.
func (c *Client) Listen(ctx context.Context, f func(IM)) error {
	c.srv.OnMessage(func(req *sip.Request, tx sip.ServerTransaction) {
		_ = tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
		f(IM{From: req.From().Address.String(), Text: string(req.Body())})
	})
	contact := "sip:" + c.aor.User + "@" + c.o.Server + ";transport=tls"
	const expires = 10 * time.Minute
	// register says whether a failure is for good: a refusal (403, 404,
	// 401 after the credentials...), not a server or its next hop out of
	// reach for now (no answer, 408, 480, 5xx: a core restarting behind
	// the edge answers 503).
	register := func() (forGood bool, err error) {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		res, err := c.Register(rctx, contact, expires)
		if err == nil || res == nil || !errors.Is(err, ErrRefused) {
			return false, err
		}
		return res.StatusCode != 408 && res.StatusCode != 480 && res.StatusCode < 500, err
	}
	if _, err := register(); err != nil {
		return err
	}
	refresh := time.Now().Add(expires - time.Minute)
	registered := true // the last registration went through
	var retry time.Time
	backoff := time.Second
	for {
		select {
		case <-ctx.Done():
			uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, _ = c.Register(uctx, contact, 0)
			return nil
		case <-time.After(time.Second):
		}
		now := time.Now()
		if registered && now.Before(refresh) && c.connected() || !registered && now.Before(retry) {
			continue
		}
		switch forGood, err := register(); {
		case err == nil:
			registered, refresh, backoff = true, time.Now().Add(expires-time.Minute), time.Second
		case forGood:
			return err
		case ctx.Err() != nil:
		default:
			registered, retry = false, time.Now().Add(backoff)
			backoff = min(2*backoff, 30*time.Second)
		}
	}
}

// connected says whether the client holds a connection to the server.
func (c *Client) connected() bool { return c.withConn(func(sip.Connection) {}) }

// withConn runs f with the client's connection to the server, if it holds
// one, and says whether it did.
func (c *Client) withConn(f func(sip.Connection)) bool {
	conn, err := c.ua.TransportLayer().GetConnection("tls", c.o.Server)
	if err != nil || conn == nil {
		return false
	}
	defer conn.TryClose() // GetConnection took a reference
	f(conn)
	return true
}
