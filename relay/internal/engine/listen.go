package engine

import (
	"errors"
	"maps"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Group is the set of SO_REUSEPORT UDP sockets bound to one listen address,
// presented to pion as one net.PacketConn so that pion has one allocation
// manager per address (EVEN-PORT reservations and 5-tuple lookups must see
// every client, whichever socket the kernel hashed it to). Each socket is
// polled by its own loop, which runs the ChannelData fast path and queues
// for pion only what pion must handle.
type Group struct {
	e     *Engine
	addr  netip.AddrPort
	socks []*sock
	mu    sync.Mutex // serialises writers of table
	table [tableShards]atomic.Pointer[map[chanKey]*bound]

	toPion chan packet
	done   chan struct{}
	once   sync.Once

	// outs[i] is loop i's send batch toward this group's clients; it
	// leaves from the group's socket loop i polls.
	outs []*mmsg
}

type packet struct {
	buf *[mtu]byte
	n   int
	src netip.AddrPort
}

var packetPool = sync.Pool{New: func() any { return new([mtu]byte) }}

type chanKey struct {
	client netip.AddrPort
	number uint16
}

type bound struct {
	alloc *Alloc
	peer  netip.AddrPort
	// perm is whether the peer was permitted when alloc.gen was perm>>1
	// (bit 0); the loops look again after a change.
	perm atomic.Uint64
}

func newBound(a *Alloc, peer netip.AddrPort) *bound {
	b := &bound{alloc: a, peer: peer}
	b.perm.Store(^uint64(0)) // no generation yet
	return b
}

// permitted is alloc.permitted(peer), looked up again only after the
// allocation's permissions or channels changed.
func (b *bound) permitted() bool {
	gen := b.alloc.gen.Load()
	if c := b.perm.Load(); c>>1 == gen {
		return c&1 == 1
	}
	ok := b.alloc.permitted(b.peer.Addr())
	c := gen << 1
	if ok {
		c |= 1
	}
	b.perm.Store(c)
	return ok
}

// listenBuffer is the receive and send buffer a UDP listen socket asks
// for: every client's datagrams arrive on a few of them.
var listenBuffer = 4 << 20 // a variable so that a test can ask for more than the kernel allows

// receiveBuffer is the room for data in fd's receive queue (what SO_RCVBUF
// reads back is twice that: the kernel doubles a request for its own
// bookkeeping), 0 when it cannot be read.
func receiveBuffer(fd int) int {
	n, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
	if err != nil {
		return 0
	}
	return n / 2
}

// ListenUDP binds n SO_REUSEPORT sockets to addr (the first picks the port
// when addr's port is 0), polls socket i on loop i, and returns the one
// net.PacketConn pion serves them through.
func (e *Engine) ListenUDP(addr netip.AddrPort, n int) (*Group, error) {
	g := &Group{e: e, toPion: make(chan packet, 1024), done: make(chan struct{})}
	for i := range g.table {
		g.table[i].Store(&map[chanKey]*bound{})
	}
	for range n {
		s, err := openUDP(addr, true, listenBuffer)
		if err != nil {
			g.Close()
			return nil, err
		}
		s.group = g
		g.socks = append(g.socks, s)
		addr = s.local
	}
	g.addr = normal(addr)
	if got := receiveBuffer(g.socks[0].fd); got < listenBuffer {
		// The kernel caps SO_RCVBUF at net.core.rmem_max without a word.
		e.log.Warn("relay listen socket receive buffer smaller than asked: bursts will be dropped sooner; raise net.core.rmem_max and net.core.wmem_max (docs/operations.md)",
			"address", g.addr.String(), "asked_bytes", listenBuffer, "got_bytes", got)
	}
	for i := range e.poll.loops {
		g.outs = append(g.outs, newMmsg(e, g.socks[i%len(g.socks)]))
	}
	// Polled only once the group is complete: its loops read g.addr and
	// g.socks.
	for i, s := range g.socks {
		if err := e.poll.add(s, i); err != nil {
			g.Close()
			return nil, err
		}
	}
	e.mu.Lock()
	e.groups[g.addr] = g
	e.mu.Unlock()
	return g, nil
}

// tableShards splits the channel table so that a bind copies a
// sixty-fourth of it (copy-on-write: the loops read it without locking).
const tableShards = 64

func (k chanKey) shard() int { return int(k.client.Port()^k.number) % tableShards }

// lookup finds the binding of a ChannelData message.
func (g *Group) lookup(k chanKey) *bound { return (*g.table[k.shard()].Load())[k] }

func (g *Group) bind(k chanKey, b *bound, add bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	cowSet(&g.table[k.shard()], k, b, add)
}

func (g *Group) unbindAll(a *Alloc) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i := range g.table {
		old := *g.table[i].Load()
		var m map[chanKey]*bound
		for k, b := range old {
			if b.alloc != a {
				continue
			}
			if m == nil {
				m = maps.Clone(old)
			}
			delete(m, k)
		}
		if m != nil {
			g.table[i].Store(&m)
		}
	}
}

// writeTo sends to a client from the group (the socket picked by the
// client's port spreads the write load). A full socket buffer drops the
// datagram, counted.
func (g *Group) writeTo(b []byte, client netip.AddrPort) {
	if g.socks[int(client.Port())%len(g.socks)].send(b, client) != nil {
		g.e.cfg.Events.Drop(DropOverload, len(b))
	}
}

// readable handles a listen socket the loop found readable: one recvmmsg
// of up to batchLen datagrams (level-triggered: the rest are seen on the
// next round). ChannelData on a bound, permitted channel goes straight to
// the peer (RFC 8656 §12.6); malformed datagrams are dropped (RFC 8489
// §6.3); the front filter answers requests pion must not see; the rest is
// queued for pion.
func (g *Group) readable(l *loop, s *sock) {
	e := g.e
	if !l.in.recv(s) {
		return
	}
	for i := range l.in.n {
		p, src := l.in.datagram(i)
		k, h := classify(p)
		switch k {
		case kindChannelData:
			number, payload := channelData(p)
			b := g.lookup(chanKey{src, number})
			switch {
			case b == nil:
				e.cfg.Events.Drop(DropNoChannel, len(p))
			case !b.permitted():
				e.cfg.Events.Drop(DropNoPermission, len(p))
			case len(payload) == 0: // nothing to send (sendto skips it)
			case !b.alloc.admit(len(payload)):
				e.cfg.Events.Drop(DropBandwidth, len(payload))
			default:
				l.toPeers.add(i, b, payload)
			}
			continue
		case kindMalformed:
			e.cfg.Events.Drop(DropMalformed, len(p))
			continue
		}
		if pass, _ := e.filter(p, h, src, g.addr, true, func(b []byte) { _ = s.send(b, src) }); !pass {
			continue
		}
		e.enqueue(g.toPion, p, src)
	}
	l.toPeers.flush(e)
}

// ReadFrom gives pion the next message it must handle.
func (g *Group) ReadFrom(p []byte) (int, net.Addr, error) {
	return dequeue(g.toPion, g.done, p)
}

// dequeue is pion's read from a queue the loops fill.
func dequeue(q <-chan packet, done <-chan struct{}, p []byte) (int, net.Addr, error) {
	select {
	case pk := <-q:
		n := copy(p, pk.buf[:pk.n])
		packetPool.Put(pk.buf)
		return n, net.UDPAddrFromAddrPort(pk.src), nil
	case <-done:
		return 0, nil, net.ErrClosed
	}
}

// enqueue copies a datagram for pion; when pion is behind it is dropped
// (counted): the loops never block.
func (e *Engine) enqueue(q chan<- packet, b []byte, src netip.AddrPort) {
	buf := packetPool.Get().(*[mtu]byte)
	n := copy(buf[:], b)
	select {
	case q <- packet{buf: buf, n: n, src: src}:
	default:
		packetPool.Put(buf)
		e.cfg.Events.Drop(DropOverload, n)
	}
}

// WriteTo carries pion's answers and Data indications to clients. 401
// challenges are rate-limited per source so that the relay cannot be used
// to amplify; Allocate failures are counted by cause.
func (g *Group) WriteTo(p []byte, addr net.Addr) (int, error) {
	if !g.e.outgoing(p, addr, true) {
		return len(p), nil
	}
	g.writeTo(p, addrPort(addr))
	return len(p), nil
}

// Close closes every socket and ends pion's reads.
func (g *Group) Close() error {
	var errs []error
	g.once.Do(func() {
		close(g.done)
		for _, s := range g.socks {
			errs = append(errs, s.close())
		}
	})
	return errors.Join(errs...)
}

// LocalAddr is the listen address.
func (g *Group) LocalAddr() net.Addr { return net.UDPAddrFromAddrPort(g.addr) }

// Addr is the listen address.
func (g *Group) Addr() netip.AddrPort { return g.addr }

// Deadlines are not used by pion's read loop; Close ends it.
func (g *Group) SetDeadline(time.Time) error      { return nil }
func (g *Group) SetReadDeadline(time.Time) error  { return nil }
func (g *Group) SetWriteDeadline(time.Time) error { return nil }

// outgoing inspects a message pion sends to a client and says whether to
// send it (a 401 to a UDP source over its rate is not sent).
func (e *Engine) outgoing(p []byte, addr net.Addr, udp bool) bool {
	k, h := classify(p)
	if k != kindSTUN || h.class != classError {
		return true
	}
	code := errorCode(p)
	if h.method == methodAllocate && code != 401 {
		e.cfg.Events.AllocationFailed(allocFailure(code))
	}
	if code == 401 && udp && !e.unauth.Allow(addrPort(addr).Addr()) {
		e.cfg.Events.Unauth401Dropped()
		return false
	}
	return true
}

func allocFailure(code int) string {
	switch code {
	case 486:
		return "quota"
	case 403:
		return "forbidden"
	case 437:
		return "mismatch"
	case 438:
		return "stale_nonce"
	case 440:
		return "family_not_supported"
	case 442:
		return "unsupported_transport"
	case 508:
		return "insufficient_capacity"
	}
	return "other"
}

// errorCode finds ERROR-CODE (RFC 8489 §14.8) in a STUN message already
// classified as well formed; 0 if absent.
func errorCode(p []byte) int {
	for off := stunHeaderLen; off+4 <= len(p); {
		typ := int(p[off])<<8 | int(p[off+1])
		l := int(p[off+2])<<8 | int(p[off+3])
		if off+4+l > len(p) {
			return 0
		}
		if typ == 0x0009 && l >= 4 {
			v := p[off+4:]
			return int(v[2]&0x7)*100 + int(v[3])
		}
		off += 4 + (l+3)&^3
	}
	return 0
}
