// Package sipnode is the SIP plumbing both servers share: a sipgo user agent
// serving a mutual-TLS listener whose peers are verified by access.Listener,
// requests admitted only from verified peers, in-flight tracking for drain,
// and an OPTIONS answer for keepalives.
package sipnode

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"portcullis/access"
)

// Handler serves one request from a verified peer.
type Handler func(peer *access.PeerIdentity, req *sip.Request, tx sip.ServerTransaction)

// Config configures a node.
type Config struct {
	Name     string // user agent name, e.g. portcullis-core
	Hostname string // our name in From/Via when we originate requests
	Listen   string // MTLS listener address
	// UserListen, if set, is a plain TLS listener for users' clients, who
	// authenticate with digest; their requests carry an anonymous peer.
	UserListen string
	// UserMaterial is the user listener's certificate (default: Material),
	// e.g. the edge's public certificate.
	UserMaterial *access.Material
	// UserCert, if set, is the user listener's certificate looked up per
	// handshake (a reload renews it); UserMaterial still gives the rest.
	UserCert func() *tls.Certificate
	// UserLimits cap the user listener's connections.
	UserLimits Limits
	// PartnerRoots, if set, lets federation partners' edges present a
	// certificate on the user listener (access.ListenerConfig.PartnerRoots).
	PartnerRoots func() *x509.CertPool
	// MaxMessage, if set, lets messages up to twice its size be parsed (so
	// that the handler can answer 413 above it); larger ones close the
	// connection. Default: sipgo's 65535.
	MaxMessage int
	// ParseLimit, if larger than twice MaxMessage, is the largest message
	// parsed (a node whose internal peers send large documents, e.g. a
	// meeting's full roster).
	ParseLimit       int
	Material         *access.Material
	Allow            *access.AllowList
	HandshakeTimeout time.Duration
	// Caps cap the MTLS listener's connections (zero: none).
	Caps access.ConnCaps
	// ClientTLS is used when this node dials out (nil: it never dials).
	ClientTLS *tls.Config
	Log       *slog.Logger
	// StripFromUsers are headers removed from requests that arrive on the
	// user listener (users may not set them, e.g. the edge trust header).
	StripFromUsers []string
	// OnRequest is called for each request admitted, with its method.
	OnRequest func(method string)
	// OnRefused is called for each refused MTLS connection, with the reason.
	OnRefused func(reason string)
	// DialedPeer, if set, names the peer of a request that arrives on a
	// connection this node dialled (no listener of ours knows it): a
	// federation partner's edge sending in a dialog we opened.
	DialedPeer func(source string) (*access.PeerIdentity, bool)
}

// Limits are connection limits of a listener.
type Limits struct {
	HandshakeTimeout time.Duration // default: the node's
	MaxConnsPerAddr  int
	MaxConns         int
	IdleTimeout      time.Duration
	MessageTimeout   time.Duration // a begun SIP message must be complete within this
}

// Node is a running SIP endpoint.
type Node struct {
	cfg      Config
	log      *slog.Logger
	UA       *sipgo.UserAgent
	Server   *sipgo.Server
	Client   *sipgo.Client
	listener *access.Listener
	users    *access.Listener

	draining atomic.Bool
	mu       sync.Mutex
	inflight int
	idle     chan struct{} // closed when inflight drops to zero while draining
	serving  chan error    // set by Serve; receives each ServeTLS's result
	closer   sync.Once
	closeErr error
	late     lateAnswers // late.go
	dials    dials
	dialed   *dialedListener // dial.go; nil when the node never dials
}

// New creates the user agent and binds the listener (if cfg.Listen is set).
func New(cfg Config) (*Node, error) {
	log := cfg.Log
	opts := []sipgo.UserAgentOption{
		sipgo.WithUserAgent(cfg.Name),
		// The SIP stack never resolves names: every next hop is an address
		// we chose (flows, routes, partners found through our own
		// resolver). A name would otherwise go to the machine's resolver.
		sipgo.WithUserAgentDNSResolver(NoDNS),
		sipgo.WithUserAgentHostname(cfg.Hostname),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(libraryLogger(log).With("layer", "sip-transport"))),
		// A response that matches no transaction (a retransmission after
		// the transaction ended, or junk; a 2xx that crossed a CANCEL was
		// taken already: late.go) is dropped with a debug line: sipgo's
		// default logs each at info, so a peer could flood the log.
		sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerUnhandledResponseHandler(func(r *sip.Response) {
			log.Debug("response matching no transaction dropped", "status", r.StatusCode, "source", r.Source())
		})),
	}
	if cfg.ClientTLS != nil {
		opts = append(opts, sipgo.WithUserAgenTLSConfig(cfg.ClientTLS))
	}
	if cfg.MaxMessage > 0 {
		p := sip.NewParser()
		p.MaxMessageLength = max(2*cfg.MaxMessage, cfg.ParseLimit)
		opts = append(opts, sipgo.WithUserAgentParser(p))
	}
	ua, err := sipgo.NewUA(opts...)
	if err != nil {
		return nil, err
	}
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(libraryLogger(log).With("layer", "sip-server")))
	if err != nil {
		ua.Close()
		return nil, err
	}
	cli, err := sipgo.NewClient(ua, sipgo.WithClientLogger(libraryLogger(log).With("layer", "sip-client")), sipgo.WithClientHostname(cfg.Hostname))
	if err != nil {
		ua.Close()
		return nil, err
	}
	n := &Node{cfg: cfg, log: log, UA: ua, Server: srv, Client: cli}
	if cfg.ClientTLS != nil {
		n.dialed = newDialedListener()
		go func() { n.dialed.served <- srv.ServeTLS(n.dialed) }()
	}
	ua.TransportLayer().OnMessage(n.watchLate)
	n.Handle(sip.OPTIONS, n.options)
	srv.OnNoRoute(n.wrap(func(_ *access.PeerIdentity, req *sip.Request, tx sip.ServerTransaction) {
		res := sip.NewResponseFromRequest(req, 405, "Method Not Allowed", nil)
		res.AppendHeader(sip.NewHeader("Allow", "OPTIONS"))
		respond(log, tx, res)
	}))
	if cfg.Listen != "" {
		ln, err := access.Listen("tcp", cfg.Listen, access.ListenerConfig{
			Material:         cfg.Material,
			Allow:            cfg.Allow,
			HandshakeTimeout: cfg.HandshakeTimeout,
			Log:              log,
			OnRefused:        cfg.OnRefused,
			MaxConnsPerAddr:  cfg.Caps.ConnectionsPerAddress,
			MaxConns:         cfg.Caps.MaxConnections,
		})
		if err != nil {
			n.closeDialed()
			ua.Close()
			return nil, err
		}
		n.listener = ln
	}
	if cfg.UserListen != "" {
		m := cfg.UserMaterial
		if m == nil {
			m = cfg.Material
		}
		hs := cfg.UserLimits.HandshakeTimeout
		if hs == 0 {
			hs = cfg.HandshakeTimeout
		}
		ln, err := access.Listen("tcp", cfg.UserListen, access.ListenerConfig{
			Material: m, HandshakeTimeout: hs, Log: log, OnRefused: cfg.OnRefused,
			MaxConnsPerAddr: cfg.UserLimits.MaxConnsPerAddr, MaxConns: cfg.UserLimits.MaxConns, IdleTimeout: cfg.UserLimits.IdleTimeout,
			MessageTimeout: cfg.UserLimits.MessageTimeout, PartnerRoots: cfg.PartnerRoots, Cert: cfg.UserCert,
			// Users' messages: up to twice MaxMessage is parsed (the handler
			// answers 413 above MaxMessage); larger closes the connection
			// before its body is read, whatever the parser's limit.
			MaxMessageBytes: 2 * cfg.MaxMessage,
		})
		if err != nil {
			if n.listener != nil {
				n.listener.Close()
			}
			n.closeDialed()
			ua.Close()
			return nil, fmt.Errorf("user listener %s: %w", cfg.UserListen, err)
		}
		n.users = ln
	}
	return n, nil
}

func (n *Node) listeners() []*access.Listener {
	var ls []*access.Listener
	for _, l := range []*access.Listener{n.listener, n.users} {
		if l != nil {
			ls = append(ls, l)
		}
	}
	return ls
}

// Flow names the connection a request came on (a flow, RFC 5626 §5.3):
// its source address and, for a connection one of our listeners accepted,
// the connection's number, so that a later connection from the same
// address (another user on a shared host, or behind a NAT that gives the
// port out again) is another flow. A connection we dialled is its address.
func (n *Node) Flow(source string) string {
	if id, ok := n.Peer(source); ok && id.Conn != 0 {
		return source + "#" + strconv.FormatUint(id.Conn, 10)
	}
	return source
}

// FlowAddr is a flow's transport address.
func FlowAddr(flow string) string {
	addr, _, _ := strings.Cut(flow, "#")
	return addr
}

// validFlow says whether s is a flow: an address, and maybe a number.
func validFlow(s string) bool {
	addr, num, numbered := strings.Cut(s, "#")
	if _, err := netip.ParseAddrPort(addr); err != nil {
		return false
	}
	if numbered {
		if _, err := strconv.ParseUint(num, 10, 64); err != nil {
			return false
		}
	}
	return true
}

// FlowOpen says whether a flow is open: a TLS connection with its address,
// and for a numbered flow, the same connection. It gives back the
// reference the pool's lookup takes, without closing.
func (n *Node) FlowOpen(flow string) bool {
	addr, num, numbered := strings.Cut(flow, "#")
	if numbered {
		id, ok := n.Peer(addr)
		if !ok || strconv.FormatUint(id.Conn, 10) != num {
			return false
		}
	}
	c, err := n.UA.TransportLayer().GetConnection("tls", addr)
	if err != nil || c == nil {
		return false
	}
	c.Ref(-1)
	return true
}

// UserAddr is the user listener's address ("" without one).
func (n *Node) UserAddr() string {
	if n.users == nil {
		return ""
	}
	return n.users.Addr().String()
}

// Serve starts serving the listener in the background.
func (n *Node) Serve() {
	ls := n.listeners()
	n.serving = make(chan error, len(ls))
	for _, l := range ls {
		go func() { n.serving <- n.Server.ServeTLS(l) }()
	}
}

// Addr is the listener's bound address ("" without a listener).
func (n *Node) Addr() string {
	if n.listener == nil {
		return ""
	}
	return n.listener.Addr().String()
}

// Peer returns the identity behind a request's source address: a verified
// peer on the MTLS listener, or an anonymous one (empty Name) on the user
// listener.
func (n *Node) Peer(source string) (*access.PeerIdentity, bool) {
	for _, l := range n.listeners() {
		if id, ok := l.Peer(source); ok {
			return id, true
		}
	}
	return nil, false
}

// PeerCount is the number of verified peers connected now.
func (n *Node) PeerCount() int {
	if n.listener == nil {
		return 0
	}
	return n.listener.PeerCount()
}

// Handle registers h for method. Requests reach h only from verified peers
// and not while draining.
func (n *Node) Handle(method sip.RequestMethod, h Handler) {
	n.Server.OnRequest(method, n.wrap(h))
}

func (n *Node) wrap(h Handler) sipgo.RequestHandler {
	return func(req *sip.Request, tx sip.ServerTransaction) {
		GrowStack()
		if n.cfg.OnRequest != nil {
			n.cfg.OnRequest(string(req.Method))
		}
		peer, ok := n.Peer(req.Source())
		if !ok && n.cfg.DialedPeer != nil {
			peer, ok = n.cfg.DialedPeer(req.Source())
		}
		if !ok {
			// Only verified connections are accepted, so this is a request on
			// a connection we dialed ourselves or one already closing.
			n.log.Warn("request from unverified source refused", "method", req.Method, "source", req.Source())
			if req.Method != sip.ACK {
				respond(n.log, tx, sip.NewResponseFromRequest(req, 403, "Forbidden", nil))
			}
			return
		}
		if !n.enter(inDialog(req)) {
			if req.Method != sip.ACK {
				res := sip.NewResponseFromRequest(req, 503, "Service Unavailable (draining)", nil)
				res.AppendHeader(sip.NewHeader("Retry-After", "30"))
				respond(n.log, tx, res)
			}
			return
		}
		defer n.leave()
		if peer.Name == "" { // users and partners
			for _, name := range n.cfg.StripFromUsers {
				if RemoveAll(req, name) > 0 {
					n.log.Info("header from a user removed", "header", name, "source", req.Source())
				}
			}
		}
		h(peer, req, tx)
	}
}

// enter counts a request in progress, or says false while draining. A
// request in a dialog (and an ACK) is still served then: it belongs to a
// call already under way, which a drain lets finish (the ACK of a call
// set up as the drain began, the BYE that ends one).
func (n *Node) enter(dialog bool) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.draining.Load() && !dialog {
		return false
	}
	n.inflight++
	return true
}

func (n *Node) leave() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.inflight--
	if n.inflight == 0 && n.idle != nil {
		close(n.idle)
		n.idle = nil
	}
}

// inDialog says whether req belongs to a dialog: an ACK, or a request
// whose To has a tag (§12.2).
func inDialog(req *sip.Request) bool {
	if req.Method == sip.ACK {
		return true
	}
	to := req.To()
	return to != nil && to.Params.Has("tag")
}

// options answers keepalive OPTIONS (RFC 3261 §11.2).
func (n *Node) options(_ *access.PeerIdentity, req *sip.Request, tx sip.ServerTransaction) {
	res := sip.NewResponseFromRequest(req, 200, "OK", nil)
	res.AppendHeader(sip.NewHeader("Allow", "OPTIONS"))
	res.AppendHeader(sip.NewHeader("Accept", "application/sdp"))
	respond(n.log, tx, res)
}

func respond(log *slog.Logger, tx sip.ServerTransaction, res *sip.Response) {
	if tx == nil {
		return
	}
	if err := tx.Respond(res); err != nil {
		log.Warn("sending response failed", "status", res.StatusCode, "error", err)
	}
}

// Draining reports whether Drain has begun.
func (n *Node) Draining() bool { return n.draining.Load() }

// Drain stops accepting connections and new requests (answered 503; requests
// in a dialog are still served) and waits for requests in progress to
// finish, or for ctx to end.
func (n *Node) Drain(ctx context.Context) error {
	n.mu.Lock()
	n.draining.Store(true)
	var idle chan struct{}
	if n.inflight > 0 {
		idle = make(chan struct{})
		n.idle = idle
	}
	n.mu.Unlock()
	for _, l := range n.listeners() {
		l.Close()
	}
	if idle == nil {
		return nil
	}
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return errors.New("requests still in progress at the drain deadline")
	}
}

// Close stops the listener and closes every connection.
func (n *Node) Close() error {
	n.closer.Do(func() {
		n.draining.Store(true)
		ls := n.listeners()
		for _, l := range ls {
			l.Close()
		}
		if n.serving != nil {
			for range ls {
				if err := <-n.serving; err != nil && !errors.Is(err, net.ErrClosed) {
					n.log.Warn("sip listener ended", "error", err)
				}
			}
		}
		n.closeDialed()
		n.closeErr = n.UA.Close()
	})
	return n.closeErr
}

// NoDNS is a resolver that answers nothing, for SIP stacks that must not
// use the machine's resolver.
var NoDNS = &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
	return nil, errors.New("name resolution is off in this SIP stack")
}}

// RouteLibraryLogs sends sipgo's own package-level logging (it keeps a
// global default logger) to log at warn level and above. Binaries call it
// once at start; library code never does.
func RouteLibraryLogs(log *slog.Logger) {
	sip.SetDefaultLogger(slog.New(minLevel{redacted{log.Handler()}, slog.LevelWarn}).With("layer", "sipgo"))
}

type minLevel struct {
	slog.Handler
	min slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

// RemoveAll removes every header called name, whatever its letter case
// (sipgo's RemoveHeader matches the exact spelling, and header names are
// case-insensitive: RFC 3261 §7.3.1). It reports how many it removed.
func RemoveAll(m interface {
	Headers() []sip.Header
	RemoveHeader(string) bool
}, name string) int {
	n := 0
	for {
		found := ""
		for _, h := range m.Headers() {
			if strings.EqualFold(h.Name(), name) {
				found = h.Name()
				break
			}
		}
		if found == "" || !m.RemoveHeader(found) {
			return n
		}
		n++
	}
}

// DecMaxForwards replaces Max-Forwards with one less (70 when absent) and
// reports false when it was already 0 (§16.6 step 3). It replaces rather
// than changes the header: sipgo's Clone shares header values between a
// request and its clones, which other branches are sending.
func DecMaxForwards(r *sip.Request) bool {
	next := sip.MaxForwardsHeader(70)
	if mf := r.MaxForwards(); mf != nil {
		if mf.Val() == 0 {
			return false
		}
		next = sip.MaxForwardsHeader(mf.Val() - 1)
		r.RemoveHeader("Max-Forwards")
	}
	r.AppendHeader(&next)
	return true
}

// CancelRequest is the CANCEL for a request we sent (RFC 3261 §9.1): same
// Request-URI, Call-ID, From, To, CSeq number, Route and top Via, sent to
// the same place.
func CancelRequest(r *sip.Request) *sip.Request {
	c := sip.NewRequest(sip.CANCEL, r.Recipient)
	c.AppendHeader(r.Via().Clone())
	sip.CopyHeaders("Route", r, c)
	mf := sip.MaxForwardsHeader(70)
	c.AppendHeader(&mf)
	sip.CopyHeaders("From", r, c)
	sip.CopyHeaders("To", r, c)
	sip.CopyHeaders("Call-ID", r, c)
	c.AppendHeader(&sip.CSeqHeader{SeqNo: r.CSeq().SeqNo, MethodName: sip.CANCEL})
	c.SetBody(nil) // Content-Length: 0 (a stream needs it to find the message's end)
	c.SetDestination(r.Destination())
	c.SetTransport(r.Transport())
	return c
}
