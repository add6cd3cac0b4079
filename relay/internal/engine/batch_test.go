package engine

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A send batch goes out as runs: datagrams to one destination with one size
// (the last may be shorter) are one message with UDP_SEGMENT. Over real
// sockets, IPv4 and IPv6, each receiver gets every datagram whole, in
// order, with its own boundaries; a run the kernel refuses as one message (SO_NO_CHECK makes
// it refuse UDP_SEGMENT with EINVAL) goes datagram by datagram, and nothing
// is lost either way.
func TestSendBatchRuns(t *testing.T) {
	for _, tc := range []struct {
		loopback string
		refuse   bool
	}{{"127.0.0.1", false}, {"127.0.0.1", true}, {"::1", false}} { // (IPv6 ignores SO_NO_CHECK)
		t.Run(fmt.Sprintf("%s refused=%v", tc.loopback, tc.refuse), func(t *testing.T) {
			refuse, ip := tc.refuse, netip.MustParseAddr(tc.loopback)
			network := map[bool]string{false: "udp4", true: "udp6"}[ip.Is6()]
			if c, err := net.ListenUDP(network, &net.UDPAddr{IP: ip.AsSlice()}); err != nil {
				t.Log("no such loopback on this host:", err)
				return
			} else {
				c.Close()
			}
			var drops atomic.Int64
			e := &Engine{}
			e.cfg.Events.Drop = func(string, int) { drops.Add(1) }
			s, err := openUDP(netip.AddrPortFrom(ip, 0), false, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer s.close()
			if refuse {
				if err := unix.SetsockoptInt(s.tx, unix.SOL_SOCKET, unix.SO_NO_CHECK, 1); err != nil {
					t.Fatal(err)
				}
			}
			recv := func() *net.UDPConn {
				c, err := net.ListenUDP(network, &net.UDPAddr{IP: ip.AsSlice()})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				return c
			}
			r1, r2 := recv(), recv()
			if refuse {
				// The premise: this socket's runs are refused.
				var c [gsoCmsgLen]byte
				n := putSegment(&c, 10)
				dst := sockaddr(r1.LocalAddr().(*net.UDPAddr).AddrPort(), s.v6)
				if _, err := unix.SendmsgN(s.tx, make([]byte, 20), c[:n], dst, 0); err != unix.EINVAL {
					t.Fatalf("UDP_SEGMENT with SO_NO_CHECK: %v, want EINVAL", err)
				}
			}
			to := map[*net.UDPConn]netip.AddrPort{
				r1: r1.LocalAddr().(*net.UDPAddr).AddrPort(),
				r2: r2.LocalAddr().(*net.UDPAddr).AddrPort(),
			}
			plan := []struct {
				c    *net.UDPConn
				size int
			}{
				{r1, 100}, {r1, 100}, {r1, 100}, {r1, 60}, // one run, the last shorter
				{r1, 100},            // a run of one: a shorter datagram ended the last
				{r2, 100}, {r2, 100}, // another destination
				{r1, 50}, {r1, 50}, {r1, 80}, // longer: a new run
				{r2, mtu}, {r2, mtu},
			}
			m := newMmsg(e, s)
			want := map[*net.UDPConn][][]byte{}
			for i, p := range plan {
				b := bytes.Repeat([]byte{byte('a' + i)}, p.size)
				copy(m.slot()[headroom:], b)
				m.queue(headroom, len(b), to[p.c])
				want[p.c] = append(want[p.c], b)
			}
			if got := m.coalesce(m.n); got != 6 {
				t.Fatalf("%d datagrams laid out as %d messages, want 6", m.n, got)
			}
			m.flush()
			for c, datagrams := range want {
				for i, w := range datagrams {
					b := make([]byte, 2*mtu)
					_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
					n, err := c.Read(b)
					if err != nil {
						t.Fatalf("datagram %d to %s: %v", i, to[c], err)
					}
					if !bytes.Equal(b[:n], w) {
						t.Fatalf("datagram %d to %s: %d bytes of %q, want %d of %q", i, to[c], n, b[:1], len(w), w[:1])
					}
				}
				_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
				if n, err := c.Read(make([]byte, 2*mtu)); err == nil {
					t.Fatalf("%s got a datagram more (%d bytes)", to[c], n)
				}
			}
			if drops.Load() != 0 {
				t.Fatalf("%d datagrams dropped", drops.Load())
			}
			if e.gsoOff.Load() {
				t.Fatal("EINVAL (one run refused) turned runs off for the engine")
			}
		})
	}
}

// A client's ChannelData read in one listen batch leaves toward each peer
// as runs (peerRuns). Bursts on two channels, with equal sizes, a shorter
// datagram that ends a run and a longer one that starts the next, reach
// both peers whole and in order; so they do when the relay socket refuses
// runs (SO_NO_CHECK: EINVAL) and they go one by one.
func TestClientBurstsReachPeersWhole(t *testing.T) {
	for _, refuse := range []bool{false, true} {
		t.Run(fmt.Sprintf("refused=%v", refuse), func(t *testing.T) {
			gateThresholds(t, 1, 1, 0, 1)
			e, g, relayAddr := loopbackRelay(t, 1)
			if refuse {
				a := e.allocByRelay(relayAddr)
				if err := unix.SetsockoptInt(a.s.tx, unix.SOL_SOCKET, unix.SO_NO_CHECK, 1); err != nil {
					t.Fatal(err)
				}
			}
			client, peerA, peerB := loopbackUDP(t, 1), loopbackUDP(t, 1), loopbackUDP(t, 2)
			e.AllocationCreated(client.LocalAddr(), net.UDPAddrFromAddrPort(g.addr), "udp", "u", "realm", relayAddr, 600)
			for number, p := range map[uint16]*net.UDPConn{0x4001: peerA, 0x4002: peerB} {
				e.PermissionCreated(nil, nil, "", "", "", relayAddr, p.LocalAddr().(*net.UDPAddr).IP)
				e.ChannelCreated(nil, nil, "", "", "", relayAddr, p.LocalAddr(), number)
			}
			burst := []struct {
				number uint16
				size   int
			}{{0x4001, 100}, {0x4001, 100}, {0x4002, 50}, {0x4001, 100}, {0x4001, 40}, {0x4001, 100}, {0x4002, 50}, {0x4002, 50}, {0x4001, 100}}
			var seq int
			want := map[*net.UDPConn][][]byte{}
			for range 30 {
				sent := map[*net.UDPConn]int{}
				for _, d := range burst {
					payload := bytes.Repeat([]byte{byte(seq)}, d.size)
					seq++
					copy(payload, fmt.Sprintf("%05d", seq))
					m := append([]byte{byte(d.number >> 8), byte(d.number), byte(d.size >> 8), byte(d.size)}, payload...)
					if _, err := client.WriteTo(m, net.UDPAddrFromAddrPort(g.addr)); err != nil {
						t.Fatal(err)
					}
					p := peerA
					if d.number == 0x4002 {
						p = peerB
					}
					want[p] = append(want[p], payload)
					sent[p]++
				}
				for p, n := range sent {
					for range n {
						b := make([]byte, 2048)
						_ = p.SetReadDeadline(time.Now().Add(2 * time.Second))
						got, err := p.Read(b)
						if err != nil {
							t.Fatalf("peer %s: %v (after %d datagrams)", p.LocalAddr(), err, seq)
						}
						w := want[p][0]
						want[p] = want[p][1:]
						if !bytes.Equal(b[:got], w) {
							t.Fatalf("peer %s got %d bytes %q, want %d bytes %q", p.LocalAddr(), got, b[:5], len(w), w[:5])
						}
					}
				}
			}
		})
	}
}

// The start-up probe finds UDP_SEGMENT working on this kernel (4.18 or
// later), so the engine sends runs.
func TestGSOProbe(t *testing.T) {
	if err := probeGSO(); err != nil {
		t.Fatalf("probe: %v", err)
	}
}
