package engine

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"portcullis/policy"
)

// tcpAlloc is an RFC 6062 allocation (a TCP relay). pion splices its data
// connections; every peer-side connection is one the generator made or
// accepted, so the engine counts and paces the bytes there. It is accounted
// like a UDP allocation: the per-user and total quotas, the active gauge,
// the traffic counters and one log line when it ends.
type tcpAlloc struct {
	e     *Engine
	relay netip.AddrPort // advertised relay address

	// Set when pion reports the allocation created (under e.mu).
	linked   bool
	client   netip.AddrPort
	local    netip.AddrPort
	userID   string
	user     *user
	created  time.Time
	clientRm atomic.Bool
	// caps are the allocation's and the user's bandwidth limiters, set
	// when linked (a peer's connection may be accepted before that).
	caps atomic.Pointer[[2]*rate.Limiter]

	stats Totals
	once  sync.Once

	connMu sync.Mutex
	conns  map[*peerConn]struct{} // open connections with peers
}

// track wraps c, a connection with a peer, and keeps it until it closes.
func (t *tcpAlloc) track(c net.Conn) *peerConn {
	pc := &peerConn{Conn: c, t: t}
	t.connMu.Lock()
	if t.conns == nil {
		t.conns = map[*peerConn]struct{}{}
	}
	t.conns[pc] = struct{}{}
	t.connMu.Unlock()
	return pc
}

// revokeDenied closes the connections with peers pol denies (after a
// reload changed the policy).
func (t *tcpAlloc) revokeDenied(pol *policy.PeerPolicy) {
	t.connMu.Lock()
	var doomed []*peerConn
	for c := range t.conns {
		if pol.Check(addrPort(c.RemoteAddr()).Addr()) != policy.Allowed {
			doomed = append(doomed, c)
		}
	}
	t.connMu.Unlock()
	for _, c := range doomed {
		_ = c.Close()
	}
}

// isTCP reports whether an address pion hands the engine is a TCP relay's:
// UDP and TCP relays can hold the same port number, so events are routed by
// the address's type, never by its port alone.
func isTCP(a net.Addr) bool {
	_, ok := a.(*net.TCPAddr)
	return ok
}

// tcpCreated links a TCP relay to its client (AllocationCreated).
func (e *Engine) tcpCreated(src, dst net.Addr, userID string, relay net.Addr) {
	e.mu.Lock()
	defer e.mu.Unlock()
	t := e.tcpByRelay[normal(addrPort(relay))]
	if t == nil || t.linked {
		return
	}
	t.client, t.local = normal(addrPort(src)), normal(addrPort(dst))
	t.userID, t.created = userID, time.Now()
	t.user = e.userFor(userID)
	t.user.taken(t.client)
	t.caps.Store(&[2]*rate.Limiter{e.allocLimiter(), t.user.limiter})
	t.linked = true
	e.tcpByTuple[tuple{t.client, t.local}] = t
	e.active.Add(1)
}

// tcpEnded finishes a TCP relay: counters, tables and its log line. pion
// reports the deletion and closes the relay listener, in either order.
func (e *Engine) tcpEnded(t *tcpAlloc) {
	t.once.Do(func() {
		e.mu.Lock()
		if e.tcpByRelay[t.relay] == t {
			delete(e.tcpByRelay, t.relay)
		}
		if !t.linked {
			e.mu.Unlock()
			return
		}
		delete(e.tcpByTuple, tuple{t.client, t.local})
		e.unlink(t.user, t.userID, &t.stats)
		e.mu.Unlock()
		e.logEnded("tcp", t.userID, t.client, t.relay, t.created, &t.stats, e.endReason(t.clientRm.Load(), "client_connection_closed_or_expired"))
	})
}

// pace holds n bytes back to the allocation's and the user's bandwidth
// caps. A stream cannot drop what is over the cap, so it waits, and TCP's
// flow control slows the sender; the bytes held back are counted.
func (t *tcpAlloc) pace(n int) {
	caps := t.caps.Load()
	if caps == nil {
		return
	}
	var delay time.Duration
	now := time.Now()
	for _, l := range caps {
		if l == nil {
			continue
		}
		if r := l.ReserveN(now, n); r.OK() {
			delay = max(delay, r.DelayFrom(now))
		}
	}
	if delay > 0 {
		t.e.cfg.Events.Paced(n)
		time.Sleep(delay)
	}
}

// chunk is the most a paced read or write moves at once: no more than
// either cap's burst, so that one reservation can always be met.
func (t *tcpAlloc) chunk(n int) int {
	if caps := t.caps.Load(); caps != nil {
		for _, l := range caps {
			if l != nil {
				n = min(n, l.Burst())
			}
		}
	}
	return n
}

// peerConn is a TCP relay's connection with a peer (dialled for Connect or
// accepted on the relay listener): reads go to the client, writes come
// from it.
type peerConn struct {
	net.Conn
	t *tcpAlloc
}

func (c *peerConn) Close() error {
	c.t.connMu.Lock()
	delete(c.t.conns, c)
	c.t.connMu.Unlock()
	return c.Conn.Close()
}

func (c *peerConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p[:c.t.chunk(len(p))])
	if n > 0 {
		c.t.stats.ToClientBytes.Add(uint64(n))
		c.t.pace(n)
	}
	return n, err
}

func (c *peerConn) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		k := c.t.chunk(len(p) - done)
		c.t.pace(k)
		n, err := c.Conn.Write(p[done : done+k])
		done += n
		c.t.stats.ToPeerBytes.Add(uint64(n))
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// relayListener is a TCP relay's listener: peers' connections come out
// wrapped, and closing it (pion does when the allocation ends) ends the
// allocation's accounting.
type relayListener struct {
	net.Listener
	t *tcpAlloc
}

func (l *relayListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return l.t.track(c), nil
}

func (l *relayListener) Close() error {
	l.t.e.tcpEnded(l.t)
	return l.Listener.Close()
}
