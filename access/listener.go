package access

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"portcullis/internal/logthrottle"
	"portcullis/internal/rawtcp"
)

// PeerIdentity is what a verified mutual-TLS peer is known by. It travels as
// one value to every auth and policy decision.
type PeerIdentity struct {
	Certificate *x509.Certificate
	Names       []string // DNS (and IP) names the certificate asserts
	Name        string   // the name that matched the allow list
	RemoteAddr  string
	// Conn numbers the connection on its listener: a flow (RFC 5626 §5.3)
	// is a connection, and a later one from the same address is another.
	Conn uint64
	// Partner marks a federation partner's edge on the external listener
	// (Names verified against the partner trust roots; Name empty).
	Partner bool
}

// ListenerConfig configures a mutual-TLS listener.
type ListenerConfig struct {
	Material *Material
	// Allow is the allow list of peer certificate names. Nil makes a plain
	// TLS listener (no client certificate: users' clients, who authenticate
	// in the protocol); its peers have an empty Name.
	Allow            *AllowList
	HandshakeTimeout time.Duration // default 10s
	Log              *slog.Logger
	// MaxConnsPerAddr and MaxConns cap the connections open (handshakes
	// included) from one source address and in all; 0: no cap.
	MaxConnsPerAddr int
	MaxConns        int
	// IdleTimeout closes a connection that sends nothing for this long
	// (slow-read and idle connections cannot pile up); 0: none.
	IdleTimeout time.Duration
	// MessageTimeout closes a connection on which a SIP message has begun
	// and is not complete this long after its first byte, however slowly
	// the bytes trickle in (slow-read, "slowloris"); 0: none.
	MessageTimeout time.Duration
	// MaxMessageBytes closes a connection on which a SIP message's header,
	// or its header and declared body, exceed this many bytes, before the
	// body is read (the parser downstream may allow more); 0: no limit.
	// Federation partners' connections are not limited.
	MaxMessageBytes int
	// OnRefused is called once per refused connection with the reason.
	OnRefused func(reason string)
	// OnAccepted is called once per verified connection.
	OnAccepted func(id *PeerIdentity)
	// PartnerRoots, on a plain TLS listener (Allow nil), asks clients for a
	// certificate: one that chains to these roots makes the peer a
	// federation partner; none makes it a user; one that does not chain is
	// refused. Nil (or a nil pool): no certificate is asked for. Read per
	// handshake, so a reload can change it.
	PartnerRoots func() *x509.CertPool
	// Cert, if set, is the certificate presented, looked up per handshake
	// so that a reload can put a renewed one in place; else Material's.
	Cert func() *tls.Certificate
}

// Listener accepts TCP connections, completes the TLS handshake off the
// accept path (a slow peer cannot hold up others), verifies the peer against
// the CA and the allow list, and hands out only verified connections. It
// remembers each verified peer's identity under its remote address until the
// connection closes.
type Listener struct {
	inner net.Listener
	cfg   ListenerConfig
	tls   *tls.Config
	conns chan net.Conn
	// quiet logs the refusals anyone who reaches the listener can cause at
	// any rate (OnRefused still counts each).
	quiet *logthrottle.Logger

	mu     sync.Mutex
	peers  map[string]*PeerIdentity
	serial uint64    // the last PeerIdentity.Conn given
	count  connCount // connections per source address and in all, handshakes included

	ctx       context.Context // ended by Close; bounds every handshake
	cancel    context.CancelFunc
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// Listen binds addr and starts accepting.
func Listen(network, addr string, cfg ListenerConfig) (*Listener, error) {
	inner, err := net.Listen(network, addr)
	if err != nil {
		return nil, err
	}
	return NewListener(inner, cfg), nil
}

// NewListener wraps an already bound listener.
func NewListener(inner net.Listener, cfg ListenerConfig) *Listener {
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	conf := ServerConfig(cfg.Material)
	if cfg.Cert != nil {
		conf.Certificates = nil
		conf.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cfg.Cert(), nil }
	}
	l := &Listener{
		inner: inner,
		cfg:   cfg,
		tls:   conf,
		conns: make(chan net.Conn),
		quiet: logthrottle.New(cfg.Log),
		peers: map[string]*PeerIdentity{},
		count: connCount{perAddr: cfg.MaxConnsPerAddr, all: cfg.MaxConns},
	}
	// Connection numbers start at random, so that one kept in a token from
	// before a restart does not name a connection made after it.
	var start [8]byte
	_, _ = rand.Read(start[:])
	l.serial = binary.BigEndian.Uint64(start[:]) >> 1
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	for {
		raw, err := l.inner.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			l.cfg.Log.Warn("accept failed", "error", err)
			select {
			case <-l.ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		if !l.admit(raw) {
			continue
		}
		l.wg.Add(1)
		go l.handshake(raw)
	}
}

// admit counts a new connection against the caps, or refuses it.
func (l *Listener) admit(raw net.Conn) bool {
	if l.count.admit(sourceAddr(raw)) {
		return true
	}
	raw.Close()
	l.quiet.Warn("connection refused", "remote", raw.RemoteAddr().String(), "reason", ReasonConnectionCap)
	if l.cfg.OnRefused != nil {
		l.cfg.OnRefused(ReasonConnectionCap)
	}
	return false
}

func (l *Listener) release(raw net.Conn) { l.count.release(sourceAddr(raw)) }

func (l *Listener) handshake(raw net.Conn) {
	defer l.wg.Done()
	remote := raw.RemoteAddr().String()
	var id *PeerIdentity
	cfg := l.tls.Clone()
	var partnerRoots *x509.CertPool
	if l.cfg.Allow == nil && l.cfg.PartnerRoots != nil {
		partnerRoots = l.cfg.PartnerRoots()
	}
	switch {
	case partnerRoots != nil:
		cfg.ClientAuth = tls.RequestClientCert
		cfg.VerifyPeerCertificate = func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			if len(rawCerts) == 0 {
				id = &PeerIdentity{}
				return nil
			}
			var err error
			id, err = VerifyPartner(rawCerts, partnerRoots)
			return err
		}
	case l.cfg.Allow == nil:
		cfg.ClientAuth = tls.NoClientCert
		id = &PeerIdentity{}
	default:
		cfg.VerifyPeerCertificate = func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			var err error
			id, err = VerifyPeer(rawCerts, l.cfg.Material.Roots, l.cfg.Allow)
			return err
		}
	}
	conn := tls.Server(rawtcp.Wrap(raw), cfg)
	ctx, cancel := context.WithTimeout(l.ctx, l.cfg.HandshakeTimeout)
	err := conn.HandshakeContext(ctx)
	ctxErr := ctx.Err()
	cancel()
	if err == nil && id == nil {
		err = &PeerRefusedError{Reason: ReasonNoCertificate} // never admit an unverified peer
	}
	if err != nil {
		l.release(raw)
		l.refuse(raw, remote, err, ctxErr)
		return
	}
	id.RemoteAddr = remote
	l.mu.Lock()
	l.serial++
	id.Conn = l.serial
	l.peers[remote] = id
	l.mu.Unlock()
	if l.cfg.OnAccepted != nil {
		l.cfg.OnAccepted(id)
	}
	if l.cfg.Allow != nil {
		l.cfg.Log.Info("mtls peer accepted", "remote", remote, "name", id.Name)
	} else if id.Partner {
		l.cfg.Log.Info("partner edge accepted", "remote", remote, "names", id.Names)
	}
	c := &trackedConn{Conn: conn, l: l, remote: remote, id: id, raw: raw, idle: l.cfg.IdleTimeout, msgTimeout: l.cfg.MessageTimeout, maxMsg: l.maxMessage(id),
		localAddr: &addrString{raw.LocalAddr(), raw.LocalAddr().String()}, remoteAddr: &addrString{raw.RemoteAddr(), remote}}
	select {
	case l.conns <- c:
	case <-l.ctx.Done():
		c.Close()
	}
}

func (l *Listener) refuse(raw net.Conn, remote string, err, ctxErr error) {
	raw.Close()
	var pr *PeerRefusedError
	reason := ReasonHandshakeFailed
	var names []string
	switch {
	case errors.As(err, &pr):
		reason, names = pr.Reason, pr.Names
	case errors.Is(ctxErr, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded):
		reason = ReasonTimeout
	}
	if l.ctx.Err() != nil {
		return // shutting down: not a refusal
	}
	l.quiet.Warn("mtls peer refused", "remote", remote, "reason", reason, "names", names, "error", err)
	if l.cfg.OnRefused != nil {
		l.cfg.OnRefused(reason)
	}
}

// Accept returns the next verified connection.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.ctx.Done():
		return nil, net.ErrClosed
	}
}

// Close stops accepting. Connections already handed out stay open.
func (l *Listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		l.cancel()
		err = l.inner.Close()
		l.wg.Wait()
	})
	return err
}

// Addr is the bound address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Peer returns the identity of the verified peer connected from remoteAddr.
func (l *Listener) Peer(remoteAddr string) (*PeerIdentity, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	id, ok := l.peers[remoteAddr]
	return id, ok
}

// PeerCount is the number of verified connections open now.
func (l *Listener) PeerCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.peers)
}

type trackedConn struct {
	net.Conn
	l      *Listener
	remote string
	id     *PeerIdentity
	raw    net.Conn
	idle   time.Duration
	once   sync.Once

	localAddr, remoteAddr *addrString // pointers: a net.Addr made from one does not allocate

	msgTimeout  time.Duration
	maxMsg      int64
	clock       msgClock
	inMessage   bool
	msgDeadline time.Time
}

// Read reads with the connection's deadlines: the idle timeout from now,
// and while a SIP message is in progress, no later than its message
// deadline. Reads are sequential (one reader per connection), so the
// message clock needs no lock.
func (c *trackedConn) Read(b []byte) (int, error) {
	var deadline time.Time
	if c.idle > 0 || c.msgTimeout > 0 {
		if c.idle > 0 {
			deadline = time.Now().Add(c.idle)
		}
		if c.inMessage && (deadline.IsZero() || c.msgDeadline.Before(deadline)) {
			deadline = c.msgDeadline
		}
		_ = c.Conn.SetReadDeadline(deadline) // zero: none (between messages, no idle timeout)
	}
	n, err := c.Conn.Read(b)
	if (c.msgTimeout > 0 || c.maxMsg > 0) && n > 0 {
		in, began := c.clock.feed(b[:n])
		if began {
			c.msgDeadline = time.Now().Add(c.msgTimeout)
		}
		c.inMessage = in
		peak := c.clock.peak
		c.clock.peak = 0
		if c.maxMsg > 0 && peak > c.maxMsg {
			c.l.quiet.Warn("connection closed: SIP message too large", "remote", c.remote,
				"reason", ReasonMessageTooLarge, "size_at_least", peak, "limit", c.maxMsg)
			if c.l.cfg.OnRefused != nil {
				c.l.cfg.OnRefused(ReasonMessageTooLarge)
			}
			_ = c.Close()
			return 0, errMessageTooLarge
		}
	}
	if err != nil && c.inMessage && deadline.Equal(c.msgDeadline) && errors.Is(err, os.ErrDeadlineExceeded) {
		c.l.quiet.Warn("connection closed: SIP message not complete in time", "remote", c.remote,
			"reason", ReasonSlowMessage, "message_timeout", c.msgTimeout.String())
		if c.l.cfg.OnRefused != nil {
			c.l.cfg.OnRefused(ReasonSlowMessage)
		}
	}
	return n, err
}

// maxMessage is the size limit for a peer's messages: none for a
// federation partner (an authenticated organisation, whose edge may carry a
// meeting's full roster), MaxMessageBytes for everyone else.
func (l *Listener) maxMessage(id *PeerIdentity) int64 {
	if id.Partner {
		return 0
	}
	return int64(l.cfg.MaxMessageBytes)
}

// errMessageTooLarge ends a connection whose SIP message is over the limit.
var errMessageTooLarge = errors.New("SIP message over the listener's size limit")

// addrString is a connection address whose String is made once: sipgo
// formats both addresses of a connection for every request it sends over
// it (for a debug line, built even when debug logging is off).
type addrString struct {
	net.Addr
	s string
}

func (a addrString) String() string { return a.s }

func (c *trackedConn) LocalAddr() net.Addr  { return c.localAddr }
func (c *trackedConn) RemoteAddr() net.Addr { return c.remoteAddr }

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		if c.l.peers[c.remote] == c.id { // not a later connection's, from the same address
			delete(c.l.peers, c.remote)
		}
		c.l.mu.Unlock()
		c.l.release(c.raw)
	})
	return c.Conn.Close()
}
