package engine

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"portcullis/policy"
)

// mtu bounds a relayed datagram (pion uses the same 1600).
const mtu = 1600

// Alloc is one allocation's relay socket: the net.PacketConn pion reads peer
// traffic from and writes client traffic to. It keeps the allocation's
// permissions and channels (learned from pion's events) so that bound
// traffic is forwarded here, without pion.
type Alloc struct {
	s      *sock
	e      *Engine
	relay  netip.AddrPort // advertised relay address
	toPion chan packet    // peer datagrams for a TCP or TLS client, which pion frames
	done   chan struct{}

	// Set when pion reports the allocation created.
	linked   atomic.Bool
	client   netip.AddrPort
	local    netip.AddrPort
	udp      bool   // the client speaks UDP: bound traffic can bypass pion
	group    *Group // the listen group the client reaches us on (UDP)
	userID   string
	user     *user
	created  time.Time
	limiter  *rate.Limiter
	clientRm atomic.Bool // the client asked for deletion (Refresh, lifetime 0)

	perms atomic.Pointer[map[netip.Addr]struct{}]
	chans atomic.Pointer[map[netip.AddrPort]uint16] // peer → channel number
	// gen counts changes to perms and chans (after each change): what the
	// packet paths looked up in them holds while it is unchanged.
	gen atomic.Uint64
	// seen is what readable last looked up, for the source of the
	// datagram before (a media stream is one peer): only the loop that
	// polls s touches it.
	seen struct {
		from          netip.AddrPort
		gen           uint64
		permitted, ch bool
		number        uint16
	}

	stats Totals
	once  sync.Once
}

func newAlloc(e *Engine, s *sock, relay netip.AddrPort) *Alloc {
	a := &Alloc{s: s, e: e, relay: relay, toPion: make(chan packet, 4), done: make(chan struct{})}
	s.alloc = a
	a.perms.Store(&map[netip.Addr]struct{}{})
	a.chans.Store(&map[netip.AddrPort]uint16{})
	a.seen.gen = ^uint64(0)
	return a
}

// LocalAddr is the advertised relay address.
func (a *Alloc) LocalAddr() net.Addr { return net.UDPAddrFromAddrPort(a.relay) }

func (a *Alloc) permitted(ip netip.Addr) bool {
	_, ok := (*a.perms.Load())[ip.Unmap()]
	return ok
}

// allow applies the allocation's and the user's bandwidth caps to n bytes.
func (a *Alloc) allow(n int) bool {
	if a.limiter == nil && (a.user == nil || a.user.limiter == nil) {
		return true // no cap: no clock read on the packet path
	}
	now := time.Now()
	if a.limiter != nil && !a.limiter.AllowN(now, n) {
		return false
	}
	if a.user != nil && a.user.limiter != nil && !a.user.limiter.AllowN(now, n) {
		return false
	}
	return true
}

// readable handles a datagram from a peer on the relay socket (the loop
// found it readable; level-triggered, so one read per event). RFC 8656
// §12.3: a datagram from a peer without a permission is discarded. For a
// UDP client it is read into the loop's send batch toward the client's
// group, with headroom in front, and goes out as ChannelData when a channel
// is bound to the peer (RFC 8656 §12.7), else as a Data indication (§11.4),
// built here. For a TCP or TLS client pion frames it on the stream.
func (a *Alloc) readable(l *loop) {
	reads := 1
	if l.gated && a.linked.Load() && a.udp {
		reads = drainReads
	}
	for range reads {
		if !a.readOne(l) {
			return
		}
	}
}

// drainReads is how many datagrams a busy loop (gated) reads from a relay
// socket per round for a UDP client: several in a row go to the client as
// one message (mmsg.coalesce).
var drainReads = 8

// readOne reads and handles one datagram; false when there was none.
func (a *Alloc) readOne(l *loop) bool {
	buf := l.buf[:]
	var out *mmsg
	linked := a.linked.Load()
	udp := linked && a.udp
	if udp {
		out = l.out(a.group)
		buf = out.slot()
	}
	n, from, ok := l.recv(a.s, buf[headroom:headroom+mtu])
	if !ok {
		return false
	}
	if gen := a.gen.Load(); a.seen.gen != gen || a.seen.from != from {
		a.seen.from, a.seen.gen = from, gen
		a.seen.permitted = a.permitted(from.Addr())
		a.seen.number, a.seen.ch = (*a.chans.Load())[from]
	}
	if !linked || !a.seen.permitted {
		a.e.cfg.Events.Drop(DropNoPermission, n)
		return true
	}
	if !a.allow(n) {
		a.e.cfg.Events.Drop(DropBandwidth, n)
		return true
	}
	a.stats.ToClientPackets.Add(1)
	a.stats.ToClientBytes.Add(uint64(n))
	if !udp {
		a.e.enqueue(a.toPion, buf[headroom:headroom+n], from)
		return true
	}
	if a.seen.ch {
		putChannelHeader(buf[headroom-4:], a.seen.number, n)
		out.queue(headroom-4, 4+n, a.client)
		return true
	}
	start, length := putDataIndication(buf, n, from, l.tid())
	out.queue(start, length, a.client)
	return true
}

// ReadFrom serves pion's read loop on the relay socket: the peer datagrams
// for a TCP or TLS client, which pion frames on the client's stream. (For a
// UDP client the loop sends them itself; this read then waits for Close.)
func (a *Alloc) ReadFrom(p []byte) (int, net.Addr, error) {
	return dequeue(a.toPion, a.done, p)
}

// WriteTo relays what pion decoded from a client (Send indication, or
// ChannelData from a TCP client) to a peer.
func (a *Alloc) WriteTo(p []byte, addr net.Addr) (int, error) {
	peer := addrPort(addr)
	if a.e.tune().Policy.Check(peer.Addr()) != policy.Allowed {
		a.e.cfg.Events.Drop(DropDeniedPeer, len(p)) // pion checked the permission; never reached
		return len(p), nil
	}
	return a.toPeer(p, peer)
}

func (a *Alloc) toPeer(p []byte, peer netip.AddrPort) (int, error) {
	if !a.admit(len(p)) {
		a.e.cfg.Events.Drop(DropBandwidth, len(p))
		return len(p), nil
	}
	if err := a.s.send(p, peer); err != nil {
		if errors.Is(err, errSockClosed) {
			return 0, net.ErrClosed
		}
		a.e.cfg.Events.Drop(DropOverload, len(p))
	}
	return len(p), nil
}

// admit takes n bytes toward a peer from the bandwidth caps and counts
// them; false when over a cap.
func (a *Alloc) admit(n int) bool {
	if !a.allow(n) {
		return false
	}
	a.stats.ToPeerPackets.Add(1)
	a.stats.ToPeerBytes.Add(uint64(n))
	return true
}

// Close is called by pion when the allocation ends.
func (a *Alloc) Close() error {
	var err error
	a.once.Do(func() {
		err = a.s.close()
		close(a.done)
		a.e.ended(a)
	})
	return err
}

// Deadlines are not used by pion's read loop; Close ends it.
func (a *Alloc) SetDeadline(time.Time) error      { return nil }
func (a *Alloc) SetReadDeadline(time.Time) error  { return nil }
func (a *Alloc) SetWriteDeadline(time.Time) error { return nil }

func addrPort(addr net.Addr) netip.AddrPort {
	switch v := addr.(type) {
	case *net.UDPAddr:
		return v.AddrPort()
	case *net.TCPAddr:
		return v.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(addr.String())
	return ap
}

func normal(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// register records a relay socket made by the address generator; false
// (nothing recorded) at the total cap.
func (e *Engine) register(a *Alloc) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.full() {
		return false
	}
	e.byRelay[a.relay] = a
	return true
}

// full says whether the allocations made or being made, UDP and TCP
// relays, have reached the total cap (under e.mu).
func (e *Engine) full() bool {
	total := e.tune().QuotaTotal
	return total > 0 && len(e.byRelay)+len(e.tcpByRelay) >= total
}

// AllocationCreated links the relay socket to its client (pion event).
func (e *Engine) AllocationCreated(src, dst net.Addr, _, userID, _ string, relay net.Addr, _ int) {
	if isTCP(relay) {
		e.tcpCreated(src, dst, userID, relay)
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	a := e.byRelay[normal(addrPort(relay))]
	if a == nil {
		return
	}
	a.client, a.local = normal(addrPort(src)), normal(addrPort(dst))
	_, a.udp = src.(*net.UDPAddr)
	if a.udp {
		a.group = e.groups[a.local]
		a.udp = a.group != nil
	}
	a.userID, a.created = userID, time.Now()
	a.user = e.userFor(userID)
	a.user.taken(a.client)
	a.limiter = e.allocLimiter()
	e.byTuple[tuple{a.client, a.local}] = a
	e.active.Add(1)
	a.linked.Store(true)
}

// allocLimiter is a new allocation's bandwidth cap (nil: none).
func (e *Engine) allocLimiter() *rate.Limiter {
	r := e.tune().AllocRate
	if r <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(r), int(max(r, mtu)))
}

// revokeDenied removes the permissions and channels toward peers pol
// denies (after a reload changed the policy).
func (a *Alloc) revokeDenied(pol *policy.PeerPolicy) {
	for ip := range *a.perms.Load() {
		if pol.Check(ip) != policy.Allowed {
			cowSet(&a.perms, ip, struct{}{}, false)
		}
	}
	linked := a.linked.Load() // a.udp and a.group are set before it
	for peer, number := range *a.chans.Load() {
		if pol.Check(peer.Addr()) != policy.Allowed {
			cowSet(&a.chans, peer, 0, false)
			if linked && a.udp {
				a.group.bind(chanKey{a.client, number}, nil, false)
			}
		}
	}
	a.gen.Add(1)
}

// userFor returns the user's record, made on first use (under e.mu).
func (e *Engine) userFor(userID string) *user {
	u := e.users[userID]
	if u == nil {
		u = &user{}
		if r := e.tune().UserRate; r > 0 {
			u.limiter = rate.NewLimiter(rate.Limit(r), int(max(r, mtu)))
		}
		e.users[userID] = u
	}
	return u
}

// taken counts a new allocation of the user from client, in the place
// Quota reserved for it (under e.mu).
func (u *user) taken(client netip.AddrPort) {
	u.active++
	delete(u.reserved, client)
	if len(u.reserved) == 0 {
		u.reserved = nil // an idle map is memory every allocation would carry
	}
}

// releaseUser counts one of the user's allocations ended (under e.mu).
func (e *Engine) releaseUser(u *user, userID string) {
	u.active--
	e.dropIdle(u, userID)
}

// dropIdle forgets a user with no allocation and no place reserved (under
// e.mu).
func (e *Engine) dropIdle(u *user, userID string) {
	if u.active == 0 && len(u.reserved) == 0 {
		delete(e.users, userID)
	}
}

// AllocationDeleted ends an RFC 6062 allocation (pion event; UDP relays
// end through their socket's Close).
func (e *Engine) AllocationDeleted(src, dst net.Addr, _, _, _ string) {
	e.mu.Lock()
	t := e.tcpByTuple[tuple{normal(addrPort(src)), normal(addrPort(dst))}]
	e.mu.Unlock()
	if t != nil {
		e.tcpEnded(t)
	}
}

func (e *Engine) markClientDelete(client, local netip.AddrPort) {
	k := tuple{normal(client), normal(local)}
	e.mu.Lock()
	a, t := e.byTuple[k], e.tcpByTuple[k]
	e.mu.Unlock()
	if a != nil {
		a.clientRm.Store(true)
	}
	if t != nil {
		t.clientRm.Store(true)
	}
}

// allocByRelay finds a UDP relay's allocation. A TCP relay's events find
// nothing: pion keeps its permissions itself, and its port number may be a
// UDP relay's too.
func (e *Engine) allocByRelay(relay net.Addr) *Alloc {
	if isTCP(relay) {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.byRelay[normal(addrPort(relay))]
}

// PermissionCreated and PermissionDeleted track permissions (pion events).
func (e *Engine) PermissionCreated(_, _ net.Addr, _, _, _ string, relay net.Addr, peer net.IP) {
	if a := e.allocByRelay(relay); a != nil {
		ip, _ := netip.AddrFromSlice(peer)
		cowSet(&a.perms, ip.Unmap(), struct{}{}, true)
		a.gen.Add(1)
	}
}

func (e *Engine) PermissionDeleted(_, _ net.Addr, _, _, _ string, relay net.Addr, peer net.IP) {
	if a := e.allocByRelay(relay); a != nil {
		ip, _ := netip.AddrFromSlice(peer)
		cowSet(&a.perms, ip.Unmap(), struct{}{}, false)
		a.gen.Add(1)
	}
}

// ChannelCreated and ChannelDeleted track channel bindings (pion events).
func (e *Engine) ChannelCreated(_, _ net.Addr, _, _, _ string, relay, peer net.Addr, number uint16) {
	a := e.allocByRelay(relay)
	if a == nil {
		return
	}
	p := normal(addrPort(peer))
	cowSet(&a.chans, p, number, true)
	a.gen.Add(1)
	if a.udp {
		a.group.bind(chanKey{a.client, number}, newBound(a, p), true)
	}
}

func (e *Engine) ChannelDeleted(_, _ net.Addr, _, _, _ string, relay, peer net.Addr, number uint16) {
	a := e.allocByRelay(relay)
	if a == nil {
		return
	}
	cowSet(&a.chans, normal(addrPort(peer)), 0, false)
	a.gen.Add(1)
	if a.udp {
		a.group.bind(chanKey{a.client, number}, nil, false)
	}
}

// cowSet adds (or removes) k in a copy-on-write map: readers on the packet
// path load the map without locking.
func cowSet[K comparable, V any](p *atomic.Pointer[map[K]V], k K, v V, add bool) {
	for {
		old := p.Load()
		m := make(map[K]V, len(*old)+1)
		for ok, ov := range *old {
			m[ok] = ov
		}
		if add {
			m[k] = v
		} else {
			delete(m, k)
		}
		if p.CompareAndSwap(old, &m) {
			return
		}
	}
}

// ended finishes an allocation: counters, table, and its one log line.
func (e *Engine) ended(a *Alloc) {
	e.mu.Lock()
	delete(e.byRelay, a.relay)
	if !a.linked.Load() {
		e.mu.Unlock()
		return
	}
	delete(e.byTuple, tuple{a.client, a.local})
	e.unlink(a.user, a.userID, &a.stats)
	e.mu.Unlock()
	if a.udp {
		a.group.unbindAll(a)
	}
	why := "expired_or_closed"
	if !a.udp {
		why = "client_connection_closed_or_expired"
	}
	e.logEnded("udp", a.userID, a.client, a.relay, a.created, &a.stats, e.endReason(a.clientRm.Load(), why))
}

// unlink counts an allocation ended: its user's quota, the active gauge
// and the traffic totals (under e.mu).
func (e *Engine) unlink(u *user, userID string, stats *Totals) {
	e.releaseUser(u, userID)
	e.active.Add(-1)
	e.totals.add(stats)
}

// endReason says why an allocation ended: shutdown, the client's deletion
// (Refresh with lifetime 0), or otherwise.
func (e *Engine) endReason(deletedByClient bool, otherwise string) string {
	switch {
	case e.closing.Load():
		return "shutdown"
	case deletedByClient:
		return "deleted_by_client"
	}
	return otherwise
}

// logEnded is an allocation's one line (relay transport "udp" or "tcp"; a
// TCP relay counts bytes only).
func (e *Engine) logEnded(transport, userID string, client, relay netip.AddrPort, created time.Time, s *Totals, why string) {
	attrs := []any{"transport", transport, "user", userID, "client", client.String(), "relay", relay.String(),
		"lifetime", time.Since(created).Round(time.Millisecond).String(),
		"bytes_to_peer", s.ToPeerBytes.Load(), "bytes_to_client", s.ToClientBytes.Load()}
	if transport == "udp" {
		attrs = append(attrs, "packets_to_peer", s.ToPeerPackets.Load(), "packets_to_client", s.ToClientPackets.Load())
	}
	e.log.Info("allocation ended", append(attrs, "reason", why)...)
}
