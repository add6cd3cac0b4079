package engine

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v4"

	"portcullis/policy"
)

// maxFrame bounds a STUN or ChannelData frame on a stream; anything larger
// closes the connection.
const maxFrame = 4 + mtu + 512

// Stream timeouts: the TLS handshake and first frame must come quickly; an
// established connection may idle up to the longest allocation lifetime.
const (
	firstFrameTimeout = 10 * time.Second
	idleTimeout       = time.Hour + time.Minute
)

// errFrame ends a stream whose framing is broken.
var errFrame = errors.New("malformed STUN/ChannelData frame on stream")

// readFrame reads one whole frame (RFC 8489 §6.2.2 framing for STUN, RFC
// 8656 §12.5 for ChannelData, padded to 4 bytes on streams) into buf and
// returns it.
func readFrame(r *bufio.Reader, buf []byte) ([]byte, error) {
	hdr, err := r.Peek(4)
	if err != nil {
		return nil, err
	}
	var size int
	switch hdr[0] >> 6 {
	case 0:
		size = stunHeaderLen + int(binary.BigEndian.Uint16(hdr[2:4]))
	case 1:
		size = 4 + (int(binary.BigEndian.Uint16(hdr[2:4]))+3)&^3
	default:
		return nil, errFrame
	}
	if size > maxFrame || size > len(buf) {
		return nil, errFrame
	}
	if _, err := io.ReadFull(r, buf[:size]); err != nil {
		return nil, err
	}
	return buf[:size], nil
}

// streamListener accepts TCP (or TLS) connections for pion and puts the
// front filter in front of each. It closes the connections it accepted when
// it is closed: pion closes only the listener, and a client's connection
// must not outlive the server.
type streamListener struct {
	net.Listener
	e     *Engine
	tls   *tls.Config
	mu    sync.Mutex
	conns map[*streamConn]struct{}
}

// ListenStream listens on addr for TURN over TCP, or over TLS when conf is
// set. The TLS handshake runs on the connection's own goroutine (pion's), so
// a slow client holds up nobody.
func (e *Engine) ListenStream(addr string, conf *tls.Config) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &streamListener{Listener: ln, e: e, tls: conf, conns: map[*streamConn]struct{}{}}, nil
}

// connCount counts clients' open TCP/TLS connections by source
// (policy.Source: an IPv4 address, an IPv6 /64).
type connCount struct {
	mu    sync.Mutex
	per   map[netip.Addr]int
	total int
}

// admit counts a new connection from ip, or says which cap it is over.
func (e *Engine) admit(ip netip.Addr) (bool, string) {
	ip = policy.Source(ip)
	c := &e.conns
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case e.cfg.ConnsMax > 0 && c.total >= e.cfg.ConnsMax:
		return false, "total"
	case e.cfg.ConnsPerAddr > 0 && c.per[ip] >= e.cfg.ConnsPerAddr:
		return false, "per_address"
	}
	c.per[ip]++
	c.total++
	return true, ""
}

func (e *Engine) release(ip netip.Addr) {
	ip = policy.Source(ip)
	c := &e.conns
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.per[ip]--; c.per[ip] <= 0 {
		delete(c.per, ip)
	}
	c.total--
}

// OpenConns is the number of clients' TCP/TLS connections open.
func (e *Engine) OpenConns() int {
	e.conns.mu.Lock()
	defer e.conns.mu.Unlock()
	return e.conns.total
}

// Accept hands pion the next connection within the caps; one over a cap
// is closed at once, counted and logged.
func (l *streamListener) Accept() (net.Conn, error) {
	var raw net.Conn
	for {
		var err error
		if raw, err = l.Listener.Accept(); err != nil {
			return nil, err
		}
		ip := normal(addrPort(raw.RemoteAddr())).Addr()
		ok, why := l.e.admit(ip)
		if ok {
			break
		}
		l.e.cfg.Events.ConnRefused(why)
		l.e.quiet.Info("turn connection refused", "client", raw.RemoteAddr().String(), "reason", why)
		_ = raw.Close()
	}
	_ = raw.SetReadDeadline(time.Now().Add(firstFrameTimeout))
	c := raw
	if l.tls != nil {
		c = tls.Server(raw, l.tls)
	}
	sc := &streamConn{Conn: c, e: l.e, r: bufio.NewReaderSize(c, maxFrame), buf: make([]byte, maxFrame),
		client: normal(addrPort(raw.RemoteAddr())), local: normal(addrPort(raw.LocalAddr())), l: l}
	l.mu.Lock()
	l.conns[sc] = struct{}{}
	l.mu.Unlock()
	return sc, nil
}

// Close stops accepting and closes every connection still open.
func (l *streamListener) Close() error {
	err := l.Listener.Close()
	l.mu.Lock()
	conns := l.conns
	l.conns = map[*streamConn]struct{}{}
	l.mu.Unlock()
	for c := range conns {
		l.e.release(c.client.Addr())
		_ = c.Conn.Close()
	}
	return err
}

// streamConn hands pion only frames that passed the front filter.
type streamConn struct {
	net.Conn
	e             *Engine
	r             *bufio.Reader
	buf           []byte
	pending       []byte
	client, local netip.AddrPort
	// raw is set once a ConnectionBind has gone to pion: RFC 6062 §4.4, the
	// connection then carries the peer's bytes unframed.
	raw bool
	l   *streamListener
	// rmu serialises reads: after a ConnectionBind pion's read loop and its
	// copy goroutine can both be in Read for a moment as the connection
	// closes.
	rmu sync.Mutex
	// bind is the ConnectionBind request gone to pion, whose answer must be
	// signed (signAnswer).
	bind atomic.Pointer[boundRequest]
}

// boundRequest is a ConnectionBind awaiting pion's answer: its transaction
// and the key its integrity was checked with.
type boundRequest struct {
	id  [stun.TransactionIDSize]byte
	key stun.MessageIntegrity
}

func (c *streamConn) Close() error {
	c.l.mu.Lock()
	_, open := c.l.conns[c]
	delete(c.l.conns, c)
	c.l.mu.Unlock()
	if open {
		c.e.release(c.client.Addr())
	}
	return c.Conn.Close()
}

func (c *streamConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.raw && len(c.pending) == 0 {
		return c.r.Read(p)
	}
	for len(c.pending) == 0 {
		f, err := readFrame(c.r, c.buf)
		if err != nil {
			if errors.Is(err, errFrame) {
				c.e.cfg.Events.Drop(DropMalformed, 0)
			}
			return 0, err
		}
		_ = c.Conn.SetReadDeadline(time.Now().Add(idleTimeout))
		k, h := classify(f)
		switch k {
		case kindMalformed:
			c.e.cfg.Events.Drop(DropMalformed, len(f))
			return 0, errFrame
		case kindSTUN:
			pass, key := c.e.filter(f, h, c.client, c.local, false, func(b []byte) { _, _ = c.Conn.Write(b) })
			if !pass {
				continue
			}
			if h.method == methodConnectionBind && h.class == classRequest {
				c.raw = true
				_ = c.Conn.SetReadDeadline(time.Time{})
				if key != nil { // its answer is signed with the key it was checked with
					b := &boundRequest{key: key}
					copy(b.id[:], f[8:stunHeaderLen])
					c.bind.Store(b)
				}
			}
		}
		c.pending = f
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

func (c *streamConn) Write(p []byte) (int, error) {
	if !c.e.outgoing(p, c.Conn.RemoteAddr(), false) {
		return len(p), nil
	}
	if b := c.bind.Load(); b != nil {
		if signed, ok := b.signAnswer(p); ok {
			c.bind.Store(nil)
			if _, err := c.Conn.Write(signed); err != nil {
				return 0, err
			}
			return len(p), nil
		}
	}
	return c.Conn.Write(p)
}

// signAnswer adds MESSAGE-INTEGRITY (and FINGERPRINT after it) to pion's
// answer to the ConnectionBind, which pion sends unsigned; RFC 8656 §9.2.4
// wants every answer to an authenticated request signed, and coturn's
// client refuses one that is not. It reports false for any other write.
func (b *boundRequest) signAnswer(p []byte) ([]byte, bool) {
	m := &stun.Message{Raw: append([]byte(nil), p...)}
	if m.Decode() != nil || m.TransactionID != b.id || m.Type.Method != stun.MethodConnectionBind ||
		(m.Type.Class != stun.ClassSuccessResponse && m.Type.Class != stun.ClassErrorResponse) {
		return nil, false
	}
	if m.Contains(stun.AttrMessageIntegrity) {
		return p, true
	}
	out := stun.New()
	out.Type, out.TransactionID = m.Type, m.TransactionID
	out.WriteHeader()
	for _, a := range m.Attributes {
		if a.Type != stun.AttrFingerprint {
			out.Add(a.Type, a.Value)
		}
	}
	if b.key.AddTo(out) != nil || stun.Fingerprint.AddTo(out) != nil {
		return p, true
	}
	return out.Raw, true
}
