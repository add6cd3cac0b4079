package engine

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"time"

	"github.com/pion/turn/v5"
	"golang.org/x/sys/unix"

	"portcullis/policy"
)

// Family is where relay sockets of one IP family are bound and what address
// is advertised for them (differs behind a NAT).
type Family struct {
	Bind      netip.Addr
	Advertise netip.Addr
}

// Generator is pion's RelayAddressGenerator: relay sockets on ports from a
// range, bound to the configured address and advertised as another.
type Generator struct {
	E          *Engine
	V4, V6     *Family // nil: that family is not offered
	Min, Max   int
	ListenConf net.ListenConfig
}

var _ turn.RelayAddressGenerator = (*Generator)(nil)

// ErrNoFamily is returned for an address family without a relay address.
var ErrNoFamily = errors.New("no relay address configured for this address family")

// ErrNoPort is returned when every port in the range is taken.
var ErrNoPort = errors.New("no free relay port in range")

// ErrAtCapacity refuses a relay when the total cap is reached by
// allocations made or being made (pion answers 508): Allocates that passed
// the front filter's check together cannot all get one.
var ErrAtCapacity = errors.New("relay at its total allocation cap")

// Validate implements turn.RelayAddressGenerator.
func (g *Generator) Validate() error {
	if g.V4 == nil && g.V6 == nil {
		return ErrNoFamily
	}
	if g.Min < 1 || g.Max > 65535 || g.Min > g.Max {
		return fmt.Errorf("relay port range %d-%d", g.Min, g.Max)
	}
	return nil
}

func (g *Generator) family(network string) (*Family, error) {
	var f *Family
	switch network {
	case "udp4", "tcp4":
		f = g.V4
	case "udp6", "tcp6":
		f = g.V6
	}
	if f == nil {
		return nil, ErrNoFamily
	}
	return f, nil
}

// ports yields candidate ports: a random start, then every port once.
func (g *Generator) ports(requested int) []int {
	n := g.Max - g.Min + 1
	start := rand.N(n)
	out := make([]int, 0, min(n, 64)+1)
	if requested >= g.Min && requested <= g.Max {
		out = append(out, requested)
	}
	for i := 0; i < n && len(out) < 64; i++ {
		out = append(out, g.Min+(start+i)%n)
	}
	return out
}

// AllocatePacketConn makes a UDP relay socket.
func (g *Generator) AllocatePacketConn(c turn.AllocateListenerConfig) (net.PacketConn, net.Addr, error) {
	f, err := g.family(c.Network)
	if err != nil {
		return nil, nil, err
	}
	for _, port := range g.ports(c.RequestedPort) {
		s, err := openUDP(netip.AddrPortFrom(f.Bind, uint16(port)), false, 0)
		if err != nil {
			if errors.Is(err, unix.EADDRINUSE) {
				continue
			}
			return nil, nil, err
		}
		relay := netip.AddrPortFrom(f.Advertise, uint16(port))
		a := newAlloc(g.E, s, relay)
		if err := g.E.poll.add(s, -1); err != nil {
			s.close()
			return nil, nil, err
		}
		if !g.E.register(a) {
			s.close()
			return nil, nil, ErrAtCapacity
		}
		return a, net.UDPAddrFromAddrPort(relay), nil
	}
	return nil, nil, ErrNoPort
}

// AllocateListener makes a TCP relay listener (RFC 6062). It is bound with
// SO_REUSEPORT so that connections to peers can leave from the same address
// and port (AllocateConn); the port stays the allocation's own because the
// engine hands out each TCP relay port once (no other socket of anyone else
// can share it: the kernel requires SO_REUSEPORT on every socket on the
// port, and the same user).
func (g *Generator) AllocateListener(c turn.AllocateListenerConfig) (net.Listener, net.Addr, error) {
	f, err := g.family(c.Network)
	if err != nil {
		return nil, nil, err
	}
	lc := g.ListenConf
	lc.Control = reusePort
	for _, port := range g.ports(c.RequestedPort) {
		relay := netip.AddrPortFrom(f.Advertise, uint16(port))
		t := &tcpAlloc{e: g.E, relay: relay}
		g.E.mu.Lock()
		if g.E.full() {
			g.E.mu.Unlock()
			return nil, nil, ErrAtCapacity
		}
		taken := g.E.tcpByRelay[relay] != nil
		if !taken {
			g.E.tcpByRelay[relay] = t // reserved while we bind
		}
		g.E.mu.Unlock()
		if taken {
			continue
		}
		ln, err := lc.Listen(context.Background(), c.Network, net.JoinHostPort(f.Bind.String(), strconv.Itoa(port)))
		if err != nil {
			g.E.mu.Lock()
			delete(g.E.tcpByRelay, relay)
			g.E.mu.Unlock()
			continue
		}
		return &relayListener{Listener: ln, t: t}, net.TCPAddrFromAddrPort(relay), nil
	}
	return nil, nil, ErrNoPort
}

// AllocateConn dials a peer for a TCP Connect request from the allocation's
// relayed transport address (RFC 6062 §4.3: the peer sees the address the
// client was given, the bound one behind a NAT). The peer policy is checked
// again here: no connection leaves toward a denied address.
func (g *Generator) AllocateConn(c turn.AllocateConnConfig) (net.Conn, error) {
	peer := addrPort(c.RemoteAddr)
	if g.E.tune().Policy.Check(peer.Addr()) != policy.Allowed {
		g.E.cfg.Events.Drop(DropDeniedPeer, 0)
		return nil, fmt.Errorf("peer %s: %w", peer, ErrDeniedPeer)
	}
	f, err := g.family(c.Network)
	if err != nil {
		return nil, err
	}
	relay := normal(addrPort(c.LocalAddr))
	g.E.mu.Lock()
	t := g.E.tcpByRelay[relay]
	g.E.mu.Unlock()
	if t == nil {
		return nil, fmt.Errorf("connect from %s: %w", c.LocalAddr, ErrNoAllocation)
	}
	// RFC 6062 §5.2: a connection attempt times out after at least 30 s.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: f.Bind.AsSlice(), Port: int(relay.Port())}, Control: reusePort, Timeout: 30 * time.Second}
	conn, err := d.Dial(c.Network, peer.String())
	if err != nil {
		return nil, err
	}
	return t.track(conn), nil
}

// reusePort sets SO_REUSEADDR and SO_REUSEPORT on a TCP relay's sockets.
func reusePort(_, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// ErrNoAllocation: a Connect for a relay address with no TCP allocation.
var ErrNoAllocation = errors.New("no TCP allocation on that relay address")

// ErrDeniedPeer is returned for a peer the policy refuses.
var ErrDeniedPeer = errors.New("peer address denied by policy")

// Permission is pion's PermissionHandler: CreatePermission and ChannelBind
// toward a denied peer are answered 403 (RFC 8656 §9.1).
func (e *Engine) Permission(client net.Addr, peer net.IP) bool {
	ip, ok := netip.AddrFromSlice(peer)
	if !ok {
		return false
	}
	if r := e.tune().Policy.Check(ip); r != policy.Allowed {
		e.quiet.Info("turn peer refused", "client", client.String(), "peer", ip.Unmap().String(), "reason", string(r))
		e.cfg.Events.Drop(DropDeniedPeer, 0)
		return false
	}
	return true
}
