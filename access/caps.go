package access

import (
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"portcullis/internal/logthrottle"
	"portcullis/policy"
)

// connCount counts open connections per source (policy.Source: an IPv4
// address, an IPv6 /64) and in all, against caps (zero: none).
type connCount struct {
	perAddr, all int

	mu   sync.Mutex
	open map[netip.Addr]int
	n    int
}

// admit counts a connection from src, or says false when a cap is full.
func (c *connCount) admit(src netip.Addr) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if (c.all > 0 && c.n >= c.all) || (c.perAddr > 0 && c.open[src] >= c.perAddr) {
		return false
	}
	if c.open == nil {
		c.open = map[netip.Addr]int{}
	}
	c.open[src]++
	c.n++
	return true
}

// release uncounts a connection admitted from src.
func (c *connCount) release(src netip.Addr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.open[src]--; c.open[src] <= 0 {
		delete(c.open, src)
	}
	c.n--
}

func sourceAddr(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return policy.Source(a.AddrPort().Addr())
	}
	return netip.Addr{}
}

// CapListener caps the connections accepted from inner, per source address
// and in all: past a cap a new connection is closed at once, logged
// (throttled) and passed to onRefused (nil: not) as ReasonConnectionCap.
// A connection's place is free again when it is closed. For listeners
// that do their own TLS (the core's HTTPS API under tls.NewListener).
func CapListener(inner net.Listener, caps ConnCaps, log *slog.Logger, onRefused func(reason string)) net.Listener {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &capListener{Listener: inner, count: connCount{perAddr: caps.ConnectionsPerAddress, all: caps.MaxConnections},
		quiet: logthrottle.New(log), onRefused: onRefused}
}

type capListener struct {
	net.Listener
	count     connCount
	quiet     *logthrottle.Logger
	onRefused func(string)
}

func (l *capListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := sourceAddr(c)
		if l.count.admit(src) {
			return &countedConn{Conn: c, release: func() { l.count.release(src) }}, nil
		}
		c.Close()
		l.quiet.Warn("connection refused", "remote", c.RemoteAddr().String(), "reason", ReasonConnectionCap)
		if l.onRefused != nil {
			l.onRefused(ReasonConnectionCap)
		}
	}
}

// countedConn gives its place back once, when closed.
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}
