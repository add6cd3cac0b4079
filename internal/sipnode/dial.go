package sipnode

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"portcullis/internal/rawtcp"
)

// A node dials its outbound TLS connections itself (the edge's link to the
// core, the core's to an edge's internal listener) rather than leaving it
// to sipgo, so that their reads and writes are raw system calls
// (internal/rawtcp) like those of the connections it accepts: sipgo dials
// through a net.Dialer and wraps the result in crypto/tls with no hook in
// between. One connection left to ordinary system calls was enough to keep
// waking the runtime's sysmon thread, because any such call wakes it from
// the deep sleep it enters whenever the process has nothing to run
// (bench/sip/README.md: server CPU per MESSAGE at 4,000/s 0.178-0.194 ms
// with all connections raw against 0.206-0.211 with the accepted ones
// only).
//
// The connection is handed to sipgo as if accepted on a listener
// (dialedListener): sipgo pools it under its remote address, reads it, and
// sends what the node addresses to that address over it. Only addresses
// that are IP literals are dialled here (the SIP stacks resolve no names);
// for anything else sipgo dials as before.

// Connect makes sure the node holds a TLS connection to addr (an IP
// address and port), dialling one with the node's client TLS
// configuration when it has none. Concurrent calls for one address share
// one dial. It does nothing for a node that never dials (no ClientTLS) or
// an address that is not an IP literal.
func (n *Node) Connect(ctx context.Context, addr string) error {
	if n.cfg.ClientTLS == nil {
		return nil
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil
	}
	// The form sipgo pools a connection under (net.TCPAddr.String, which
	// writes an IPv4-mapped address as IPv4): any other and every call
	// would dial again.
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	key := ap.String()
	pool := n.UA.TransportLayer().Pool("tls")
	pooled := func() bool {
		c := pool.Get(key)
		if c == nil {
			return false
		}
		_, _ = c.TryClose() // Get took a reference
		return true
	}
	if pooled() {
		return nil
	}
	return n.dials.do(ctx, key, func() error {
		if pooled() { // dialled while this call waited
			return nil
		}
		return n.dial(ctx, ap)
	})
}

// dials lets one dial per address run at a time; calls that come while it
// runs share its result.
type dials struct {
	mu sync.Mutex
	m  map[string]*dialCall
}

type dialCall struct {
	done chan struct{}
	err  error
}

func (d *dials) do(ctx context.Context, key string, dial func() error) error {
	d.mu.Lock()
	if c, ok := d.m[key]; ok {
		d.mu.Unlock()
		select {
		case <-c.done:
			return c.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if d.m == nil {
		d.m = map[string]*dialCall{}
	}
	c := &dialCall{done: make(chan struct{})}
	d.m[key] = c
	d.mu.Unlock()
	c.err = dial()
	d.mu.Lock()
	delete(d.m, key)
	d.mu.Unlock()
	close(c.done)
	return c.err
}

func (n *Node) dial(ctx context.Context, ap netip.AddrPort) error {
	addr := ap.String()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	cfg := n.cfg.ClientTLS
	if cfg.ServerName == "" { // as sipgo does: the address names the peer
		cfg = cfg.Clone()
		cfg.ServerName = ap.Addr().String()
	}
	conn := tls.Client(rawtcp.Wrap(raw), cfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return fmt.Errorf("TLS handshake with %s: %w", addr, err)
	}
	if err := n.dialed.hand(ctx, conn); err != nil {
		conn.Close()
		return err
	}
	return nil
}

// dialedListener is the net.Listener through which the node hands the
// connections it dials to sipgo. Its Accept is called by one goroutine,
// sipgo's serve loop, which pools and starts reading each connection
// before it calls Accept again; so a connection handed over is in the pool
// once Accept is called again, and hand returns only then.
type dialedListener struct {
	addr    net.Addr
	conns   chan dialedConn
	done    chan struct{}
	once    sync.Once
	pending chan struct{} // closed when sipgo asks for the next connection; serve loop only
	served  chan error
}

type dialedConn struct {
	net.Conn
	pooled chan struct{}
}

var errNodeClosed = errors.New("SIP node closed")

func newDialedListener() *dialedListener {
	return &dialedListener{
		// The address sipgo notes as a TLS listening port if it is served
		// first; it uses that only to build Record-Route headers, which the
		// nodes write themselves.
		addr:   &net.TCPAddr{IP: net.IPv4zero},
		conns:  make(chan dialedConn),
		done:   make(chan struct{}),
		served: make(chan error, 1),
	}
}

// hand gives conn to sipgo and waits until it is pooled.
func (l *dialedListener) hand(ctx context.Context, conn net.Conn) error {
	dc := dialedConn{Conn: conn, pooled: make(chan struct{})}
	select {
	case l.conns <- dc:
	case <-l.done:
		return errNodeClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-dc.pooled:
		return nil
	case <-l.done:
		return errNodeClosed
	}
}

func (l *dialedListener) Accept() (net.Conn, error) {
	if l.pending != nil {
		close(l.pending)
		l.pending = nil
	}
	select {
	case dc := <-l.conns:
		l.pending = dc.pooled
		return dc.Conn, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *dialedListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *dialedListener) Addr() net.Addr { return l.addr }

// closeDialed stops handing dialled connections to sipgo (those handed
// over are sipgo's, closed with the user agent).
func (n *Node) closeDialed() {
	if n.dialed == nil {
		return
	}
	n.dialed.Close()
	<-n.dialed.served
}
