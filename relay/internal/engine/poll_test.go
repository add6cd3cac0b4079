package engine

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/turn/v5"
	"golang.org/x/sys/unix"

	"portcullis/internal/testlog"
	"portcullis/policy"
)

// drain reads every datagram queued on fd (non-blocking) and returns how
// many there were.
func drain(t *testing.T, fd int) int {
	t.Helper()
	var sa unix.RawSockaddrInet6
	b := make([]byte, 2048)
	n := 0
	for {
		_, _, errno := recvfrom(fd, b, &sa)
		if errno == unix.EAGAIN {
			return n
		}
		if errno != 0 {
			t.Fatalf("recvfrom: %v", errno)
		}
		n++
	}
}

// A relay socket has no twin (it would cost kernel memory per allocation),
// and its port stays its own: another relay socket cannot bind it.
func TestRelaySocketHoldsItsPort(t *testing.T) {
	s, err := openUDP(netip.MustParseAddrPort("127.0.0.1:0"), false, 0)
	if err != nil {
		t.Fatal(err)
	}
	if s.tx != s.fd {
		t.Fatal("a relay socket got a send twin")
	}
	if _, err := openUDP(s.local, false, 0); !errors.Is(err, unix.EADDRINUSE) {
		t.Fatalf("second relay socket on %s: %v, want EADDRINUSE", s.local, err)
	}
	if _, err := openUDP(s.local, true, 0); !errors.Is(err, unix.EADDRINUSE) {
		t.Fatalf("SO_REUSEPORT socket on relay port %s: %v, want EADDRINUSE", s.local, err)
	}
	if err := s.close(); err != nil {
		t.Fatal(err)
	}
	again, err := openUDP(s.local, false, 0)
	if err != nil {
		t.Fatalf("port not released by close: %v", err)
	}
	_ = again.close()
}

// Listen sockets share their port (SO_REUSEPORT) with each other and with
// their twins; what they send leaves from the listen address, and datagrams
// from clients are spread over the polled sockets only. IPv4 and IPv6.
func TestListenSocketsSendFromTwinsThatReceiveNothing(t *testing.T) {
	for _, loopback := range []string{"127.0.0.1", "::1"} {
		t.Run(loopback, func(t *testing.T) {
			ip := netip.MustParseAddr(loopback)
			network := "udp4"
			if ip.Is6() {
				network = "udp6"
				c, err := net.ListenUDP(network, &net.UDPAddr{IP: ip.AsSlice()})
				if err != nil {
					t.Log("no IPv6 loopback on this host:", err)
					return
				}
				c.Close()
			}
			listenTwins(t, network, ip)
		})
	}
}

func listenTwins(t *testing.T, network string, ip netip.Addr) {
	a, err := openUDP(netip.AddrPortFrom(ip, 0), true, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	b, err := openUDP(a.local, true, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	if a.tx == a.fd || b.tx == b.fd {
		t.Fatal("listen sockets without send twins")
	}
	udp := func() *net.UDPConn {
		c, err := net.ListenUDP(network, &net.UDPAddr{IP: ip.AsSlice()})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	peer := udp()
	defer peer.Close()
	if err := b.send([]byte("from the listener"), peer.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
		t.Fatal(err)
	}
	_ = peer.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 64)
	n, from, err := peer.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "from the listener" || from != a.local {
		t.Fatalf("got %q from %v (%v), want it from %v", buf[:n], from, err, a.local)
	}
	const clients, each = 20, 5
	for range clients {
		c := udp()
		for i := range each {
			if _, err := c.WriteToUDPAddrPort([]byte{byte(i)}, a.local); err != nil {
				t.Fatal(err)
			}
		}
		c.Close()
	}
	time.Sleep(50 * time.Millisecond)
	if got := drain(t, a.fd) + drain(t, b.fd); got != clients*each {
		t.Fatalf("polled sockets got %d of %d datagrams", got, clients*each)
	}
	if got := drain(t, a.tx) + drain(t, b.tx); got != 0 {
		t.Fatalf("twins got %d datagrams", got)
	}
}

// A wildcard address has no single source to connect a twin to: the polled
// socket sends itself.
func TestWildcardSocketHasNoTwin(t *testing.T) {
	s, err := openUDP(netip.MustParseAddrPort("0.0.0.0:0"), true, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	if s.tx != s.fd {
		t.Fatal("twin made for a wildcard address")
	}
}

// The packet paths cache what they looked up in an allocation's
// permissions and channels: every change must reach them. A client and a
// peer on loopback exchange datagrams through a group and an allocation
// driven by pion's events, while permissions and channels come and go.
func TestPermissionAndChannelChangesReachThePacketPaths(t *testing.T) {
	relayThroughEvents(t)
}

// The same with loops that switch between watching their epoll descriptor
// directly and through the gate on nearly every round: nothing is lost or
// stalled across the switches.
func TestLoopsSwitchingToAndFromTheGate(t *testing.T) {
	gateThresholds(t, 1, 1, 1<<30, 2)
	e := relayThroughEvents(t)
	var toggles uint64
	for _, l := range e.poll.loops {
		toggles += l.toggles.Load()
	}
	if toggles < 10 {
		t.Fatalf("loops switched %d times, want many", toggles)
	}
}

// The same with loops that go through the gate at their first event and
// stay there, taking the gate's event and arming it again every round.
func TestLoopsThroughTheGate(t *testing.T) {
	gateThresholds(t, 1, 1, 0, 1)
	e := relayThroughEvents(t)
	for _, l := range e.poll.loops {
		if l.toggles.Load() > 1 {
			t.Fatalf("a loop switched %d times, want once at most", l.toggles.Load())
		}
	}
}

// A listen socket's receive buffer is capped by net.core.rmem_max without
// an error; the relay says so in a warning with what it asked and got,
// and stays quiet when it got what it asked.
func TestListenBufferCapIsReported(t *testing.T) {
	raw, err := os.ReadFile("/proc/sys/net/core/rmem_max")
	if err != nil {
		t.Fatal(err)
	}
	rmemMax, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	saved := listenBuffer
	t.Cleanup(func() { listenBuffer = saved })
	for _, tc := range []struct {
		ask  int
		warn bool
	}{{rmemMax / 4, false}, {2*rmemMax + 1<<20, true}} {
		listenBuffer = tc.ask
		var logs testlog.Buffer
		pol, err := policy.NewPeerPolicy(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		e, err := New(Config{Log: slog.New(slog.NewTextHandler(&logs, nil)), Tune: Tunables{Policy: pol}, Loops: 1})
		if err != nil {
			t.Fatal(err)
		}
		g, err := e.ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"), 1)
		if err != nil {
			t.Fatal(err)
		}
		g.Close()
		e.Stop()
		warned := strings.Contains(logs.String(), "receive buffer smaller than asked")
		if warned != tc.warn {
			t.Fatalf("asked %d bytes with rmem_max %d: warned %v, want %v; log: %s", tc.ask, rmemMax, warned, tc.warn, logs.String())
		}
		if tc.warn && !strings.Contains(logs.String(), fmt.Sprintf("got_bytes=%d", rmemMax)) {
			t.Fatalf("the warning does not give the %d bytes got: %s", rmemMax, logs.String())
		}
	}
}

// gateThresholds sets when loops switch to and from the gate, for one test.
func gateThresholds(t *testing.T, busyE, busyR, quietE, quietR int) {
	saved := [4]int{busyEvents, busyRounds, quietEvents, quietRounds}
	busyEvents, busyRounds, quietEvents, quietRounds = busyE, busyR, quietE, quietR
	t.Cleanup(func() { busyEvents, busyRounds, quietEvents, quietRounds = saved[0], saved[1], saved[2], saved[3] })
}

// loopbackRelay is an engine with loops loops and a listen group on
// loopback, peers in 127.0.0.0/8 allowed, and one relay socket; all closed
// when the test ends.
func loopbackRelay(t *testing.T, loops int) (*Engine, *Group, net.Addr) {
	pol, err := policy.NewPeerPolicy([]string{"127.0.0.0/8"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(Config{Log: slog.New(slog.DiscardHandler), Tune: Tunables{Policy: pol}, Loops: loops})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Stop)
	g, err := e.ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"), loops)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	gen := &Generator{E: e, V4: &Family{Bind: netip.MustParseAddr("127.0.0.1"), Advertise: netip.MustParseAddr("127.0.0.1")}, Min: 40000, Max: 49999}
	pc, relayAddr, err := gen.AllocatePacketConn(turn.AllocateListenerConfig{Network: "udp4"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return e, g, relayAddr
}

func relayThroughEvents(t *testing.T) *Engine {
	e, g, relayAddr := loopbackRelay(t, 2)
	udp := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	client, peer := udp(), udp()
	e.AllocationCreated(client.LocalAddr(), net.UDPAddrFromAddrPort(g.addr), "udp", "u", "realm", relayAddr, 600)
	peerIP := peer.LocalAddr().(*net.UDPAddr).IP

	// get reads what c receives within a short wait ("" when nothing).
	get := func(c *net.UDPConn) string {
		b := make([]byte, 2048)
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := c.Read(b)
		if err != nil {
			return ""
		}
		return string(b[:n])
	}
	fromPeer := func() string { // what the client gets for "p" from the peer
		if _, err := peer.WriteTo([]byte("p"), relayAddr); err != nil {
			t.Fatal(err)
		}
		switch got := get(client); {
		case got == "":
			return "dropped"
		case len(got) == 5 && got[:2] == "\x40\x01" && got[4] == 'p':
			return "channel"
		case len(got) > 20 && got[:2] == "\x00\x17":
			return "data"
		default:
			return "other"
		}
	}
	fromClient := func() string { // what the peer gets of ChannelData on 0x4001
		if _, err := client.WriteTo([]byte{0x40, 0x01, 0, 1, 'c', 0, 0, 0}, net.UDPAddrFromAddrPort(g.addr)); err != nil {
			t.Fatal(err)
		}
		if get(peer) == "c" {
			return "relayed"
		}
		return "dropped"
	}
	check := func(step, wantPeer, wantClient string) {
		t.Helper()
		// Twice: the first datagram fills the caches, the second is served from them.
		for range 2 {
			if got := fromPeer(); got != wantPeer {
				t.Fatalf("%s: peer's datagram %s, want %s", step, got, wantPeer)
			}
			if got := fromClient(); got != wantClient {
				t.Fatalf("%s: client's ChannelData %s, want %s", step, got, wantClient)
			}
		}
	}

	check("no permission", "dropped", "dropped")
	e.PermissionCreated(nil, nil, "", "", "", relayAddr, peerIP)
	check("permission", "data", "dropped")
	e.ChannelCreated(nil, nil, "", "", "", relayAddr, peer.LocalAddr(), 0x4001)
	check("channel", "channel", "relayed")
	e.PermissionDeleted(nil, nil, "", "", "", relayAddr, peerIP)
	check("permission gone", "dropped", "dropped")
	e.PermissionCreated(nil, nil, "", "", "", relayAddr, peerIP)
	check("permission again", "channel", "relayed")
	e.ChannelDeleted(nil, nil, "", "", "", relayAddr, peer.LocalAddr(), 0x4001)
	check("channel gone", "data", "dropped")
	return e
}

// A busy loop (gated) reads several datagrams from a relay socket per
// round and sends those of one peer as runs. Bursts from three peers, one
// on a channel, one with a permission only, one with neither, interleave
// on one allocation: the client gets every ChannelData and every Data
// indication whole and in order, and nothing of the third peer.
func TestBusyLoopRelaysBurstsWhole(t *testing.T) {
	gateThresholds(t, 1, 1, 0, 1)
	e, g, relayAddr := loopbackRelay(t, 1)
	// Permissions are by address: each peer has its own loopback address.
	client, onChannel, permitted, stranger := loopbackUDP(t, 1), loopbackUDP(t, 1), loopbackUDP(t, 2), loopbackUDP(t, 3)
	e.AllocationCreated(client.LocalAddr(), net.UDPAddrFromAddrPort(g.addr), "udp", "u", "realm", relayAddr, 600)
	e.PermissionCreated(nil, nil, "", "", "", relayAddr, onChannel.LocalAddr().(*net.UDPAddr).IP)
	e.ChannelCreated(nil, nil, "", "", "", relayAddr, onChannel.LocalAddr(), 0x4001)
	e.PermissionCreated(nil, nil, "", "", "", relayAddr, permitted.LocalAddr().(*net.UDPAddr).IP)

	// A burst at a time (all of them at once would overflow the relay
	// socket's receive buffer).
	var gotCh, gotData int
	b := make([]byte, 2048)
	for i := range 30 {
		for k := range 5 {
			_, _ = onChannel.WriteTo([]byte(fmt.Sprintf("c%03d-%d", i, k)), relayAddr)
		}
		for k := range 3 {
			_, _ = permitted.WriteTo([]byte(fmt.Sprintf("d%03d-%d+", i, k)), relayAddr)
		}
		_, _ = stranger.WriteTo([]byte("x"), relayAddr)
		for gotCh+gotData < 8*(i+1) {
			_ = client.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, err := client.Read(b)
			if err != nil {
				t.Fatalf("burst %d: after %d ChannelData and %d Data indications: %v", i, gotCh, gotData, err)
			}
			switch p := b[:n]; {
			case n >= 4 && p[0] == 0x40 && p[1] == 0x01:
				if l := int(p[2])<<8 | int(p[3]); l != n-4 {
					t.Fatalf("ChannelData length %d in a %d-byte datagram", l, n)
				}
				if want := fmt.Sprintf("c%03d-%d", gotCh/5, gotCh%5); string(p[4:]) != want {
					t.Fatalf("ChannelData %d carries %q, want %q", gotCh, p[4:], want)
				}
				gotCh++
			case n > 20 && p[0] == 0x00 && p[1] == 0x17:
				want := fmt.Sprintf("d%03d-%d+", gotData/3, gotData%3)
				if !bytes.Contains(p, []byte(want)) {
					t.Fatalf("Data indication %d does not carry %q: %q", gotData, want, p)
				}
				gotData++
			default:
				t.Fatalf("unexpected datagram %q", p)
			}
		}
	}
	_ = client.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := client.Read(b); err == nil {
		t.Fatalf("the client got more: %q", b[:n])
	}
}

// loopbackUDP is a UDP socket on 127.0.0.last (any port) with a 1 MiB
// receive buffer, closed when the test ends.
func loopbackUDP(t *testing.T, last byte) *net.UDPConn {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, last)})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadBuffer(1 << 20)
	t.Cleanup(func() { c.Close() })
	return c
}
