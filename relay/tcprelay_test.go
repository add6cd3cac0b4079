package relay_test

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v4"
	"github.com/pion/turn/v5"

	"portcullis/access"
	"portcullis/internal/testport"
	"portcullis/internal/turntest"
)

var tcpTransport = attr{stun.AttrRequestedTransport, []byte{6, 0, 0, 0}}

// pionTCPClient is pion's client on a TCP control connection (for an RFC
// 6062 allocation).
func pionTCPClient(t *testing.T, e *env, cred access.TURNCredential) *turn.Client {
	t.Helper()
	ctrl, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(e.tcp)))
	if err != nil {
		t.Fatal(err)
	}
	return turntest.Client(t, e.tcp, turn.NewSTUNConn(ctrl), cred.Username, cred.Password, realm)
}

// tcpRelay opens an RFC 6062 allocation for cred with pion's client and
// connects it to peer. It returns the data connection, the relayed address,
// and end, which closes both (at the test's end if not before).
func tcpRelay(t *testing.T, e *env, cred access.TURNCredential, peer net.Addr) (net.Conn, net.Addr, func()) {
	t.Helper()
	alloc, err := pionTCPClient(t, e, cred).AllocateTCP()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := alloc.DialTCP("tcp", nil, peer.(*net.TCPAddr))
	if err != nil {
		alloc.Close()
		t.Fatal(err)
	}
	var once sync.Once
	end := func() { once.Do(func() { conn.Close(); alloc.Close() }) }
	t.Cleanup(end)
	return conn, alloc.Addr(), end
}

// A UDP and a TCP allocation can hold the same relay port number (two
// protocols): what happens to one must never touch the other. A permission
// made on the TCP allocation lets nobody reach the UDP one, and the UDP
// allocation keeps relaying to its own client.
func TestUDPAndTCPRelaysOnOnePort(t *testing.T) {
	port := testport.Both(t)
	c := testConfig(t)
	c.Relay.PortMin, c.Relay.PortMax = port, port
	c.Relay.BindIPv6 = ""
	c.AllowedPeers = []string{"127.0.0.1/32", "127.0.0.3/32"}
	e := start(t, c)
	peer := newEchoPeer(t, "127.0.0.1:0")

	u := dialClient(t, "udp", e.udp, e.cred("uma"))
	res := u.request(stun.MethodAllocate, udpTransport)
	mustOK(t, "UDP Allocate", res)
	udpRelay := relayedAddr(t, res)
	mustOK(t, "ChannelBind", u.request(stun.MethodChannelBind, channelAttr(0x4001), peerAttr(peer.addr())))

	tc := dialClient(t, "tcp", e.tcp, e.cred("tom"))
	res = tc.request(stun.MethodAllocate, tcpTransport)
	mustOK(t, "TCP Allocate", res)
	if got := relayedAddr(t, res); got.Port() != udpRelay.Port() {
		t.Fatalf("relay ports %d and %d: the test needs one port for both", got.Port(), udpRelay.Port())
	}
	stranger, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 3)})
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	mustOK(t, "CreatePermission on the TCP allocation", tc.request(stun.MethodCreatePermission, peerAttr(stranger.LocalAddr().(*net.UDPAddr).AddrPort())))

	// The UDP allocation still relays for its own client.
	if _, err := u.conn.Write(channelFrame(0x4001, []byte("ping"))); err != nil {
		t.Fatal(err)
	}
	if back := u.readRaw(2 * time.Second); len(back) < 8 || string(back[4:8]) != "ping" {
		t.Fatalf("UDP allocation after a TCP one on its port: got %q", back)
	}
	// The stranger, permitted only on the TCP allocation, does not reach
	// the UDP allocation's client.
	if _, err := stranger.WriteToUDPAddrPort([]byte("intrude"), netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), udpRelay.Port())); err != nil {
		t.Fatal(err)
	}
	if got := u.readRaw(500 * time.Millisecond); got != nil {
		t.Fatalf("a peer permitted on the TCP allocation reached the UDP allocation's client: %q", got)
	}
	if n := e.metric("portcullis_relay_allocations_active"); n != 2 {
		t.Fatalf("active allocations %v, want 2", n)
	}
	// Each ends with its own log line: its user, its client.
	mustOK(t, "Refresh 0 (UDP)", u.request(stun.MethodRefresh, lifetimeAttr(0)))
	mustOK(t, "Refresh 0 (TCP)", tc.request(stun.MethodRefresh, lifetimeAttr(0)))
	e.waitMetric(t, func(v float64) bool { return v == 0 }, "portcullis_relay_allocations_active")
	waitLog(t, e, `"user":"uma","client":"`+u.conn.LocalAddr().String()+`"`)
	waitLog(t, e, `"transport":"tcp","user":"tom","client":"`+tc.conn.LocalAddr().String()+`"`)
}

// TCP relays are allocations like the others: they count against the
// user's quota and the total, their bytes are counted in both directions
// and in their log line, and the bandwidth caps pace them.
func TestTCPAllocationAccounting(t *testing.T) {
	cfg := testConfig(t)
	cfg.Quota.PerUser = 1
	cfg.Bandwidth.PerAllocationKbps = 64 // 8 kB/s, burst 8 kB
	e := start(t, cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	received := make(chan int, 1)
	go func() { // the peer: counts what arrives, then answers 4 bytes
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 64<<10)
		total := 0
		for total < 24000 {
			n, err := c.Read(buf)
			if err != nil {
				break
			}
			total += n
		}
		received <- total
		_, _ = c.Write([]byte("done"))
	}()
	cred := e.cred("victor")
	conn, _, end := tcpRelay(t, e, cred, ln.Addr())
	// Over quota: victor's second allocation, UDP or TCP, gets 486.
	if got := code(dialClient(t, "udp", e.udp, cred).request(stun.MethodAllocate, udpTransport)); got != stun.CodeAllocQuotaReached {
		t.Fatalf("a UDP allocation beside a TCP one over a quota of 1: %d, want 486", got)
	}
	if got := code(dialClient(t, "tcp", e.tcp, cred).request(stun.MethodAllocate, tcpTransport)); got != stun.CodeAllocQuotaReached {
		t.Fatalf("a second TCP allocation over a quota of 1: %d, want 486", got)
	}
	start := time.Now()
	if _, err := conn.Write(make([]byte, 24000)); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-received:
		if n != 24000 {
			t.Fatalf("peer got %d of 24000 bytes", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the peer did not get 24000 bytes")
	}
	// 8 kB of burst, then 8 kB/s: the last byte cannot be through in much
	// under two seconds. (A lower bound: pacing guarantees it.)
	if took := time.Since(start); took < 1500*time.Millisecond {
		t.Fatalf("24000 bytes through an 8 kB/s cap in %v", took)
	}
	buf := make([]byte, 16)
	_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	if n, err := io.ReadFull(conn, buf[:4]); err != nil || string(buf[:n]) != "done" {
		t.Fatalf("answer from the peer: %q %v", buf[:n], err)
	}
	// (counted once each write returns: the peer may read first)
	e.waitMetric(t, func(v float64) bool { return v == 24000 }, "portcullis_relay_bytes_total", "direction", "to_peer")
	e.waitMetric(t, func(v float64) bool { return v == 4 }, "portcullis_relay_bytes_total", "direction", "to_client")
	if v := e.metric("portcullis_relay_paced_bytes_total"); v < 8000 {
		t.Fatalf("paced bytes %v, want at least 8000", v)
	}
	end()
	e.waitMetric(t, func(v float64) bool { return v == 0 }, "portcullis_relay_allocations_active")
	waitLog(t, e, `"transport":"tcp","user":"victor"`)
	waitLog(t, e, `"bytes_to_peer":24000,"bytes_to_client":4,"reason":"deleted_by_client"`)
	// The quota is free again.
	mustOK(t, "Allocate after the TCP allocation ended", dialClient(t, "udp", e.udp, cred).request(stun.MethodAllocate, udpTransport))
}

// A TCP relay's listener shares its port (SO_REUSEPORT) only with its own
// connections to peers: a second TCP allocation never gets the same port.
func TestTCPRelayPortIsTheAllocationsOwn(t *testing.T) {
	port := testport.Both(t)
	c := testConfig(t)
	c.Relay.PortMin, c.Relay.PortMax = port, port
	c.Relay.BindIPv6 = ""
	e := start(t, c)
	first, err := pionTCPClient(t, e, e.cred("wendy")).AllocateTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if got := first.Addr().(*net.TCPAddr).Port; got != port {
		t.Fatalf("relay port %d, want %d", got, port)
	}
	if got := code(dialClient(t, "tcp", e.tcp, e.cred("xavier")).request(stun.MethodAllocate, tcpTransport)); got != stun.CodeInsufficientCapacity {
		t.Fatalf("a second TCP allocation with the one relay port taken: %d, want 508", got)
	}
}

// Clients' TCP connections are capped per source address and in all: one
// over a cap is closed at once (nobody outside can hold the edge's
// descriptors), counted and logged; a closed one frees its place.
func TestClientConnectionCaps(t *testing.T) {
	c := testConfig(t)
	c.Connections.PerAddress, c.Connections.Max = 2, 3
	e := start(t, c)
	dial := func(from string) *client {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		conn, err := d.Dial("tcp", e.tcp)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return &client{t: t, conn: conn, stream: newReader(conn)}
	}
	binds := func(cl *client) bool {
		t.Helper()
		cl.send(stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint))
		res := cl.read(2 * time.Second)
		return res != nil && res.Type == stun.BindingSuccess
	}
	a1, a2 := dial("127.0.0.1"), dial("127.0.0.1")
	if !binds(a1) || !binds(a2) {
		t.Fatal("connections within the caps not served")
	}
	if binds(dial("127.0.0.1")) {
		t.Fatal("a third connection from one address served over a per-address cap of 2")
	}
	if !binds(dial("127.0.0.3")) {
		t.Fatal("another address's connection not served")
	}
	if binds(dial("127.0.0.4")) {
		t.Fatal("a fourth connection served over a total cap of 3")
	}
	e.waitMetric(t, func(v float64) bool { return v == 1 }, "portcullis_relay_connections_refused_total", "reason", "per_address")
	e.waitMetric(t, func(v float64) bool { return v == 1 }, "portcullis_relay_connections_refused_total", "reason", "total")
	if n := e.metric("portcullis_relay_connections_open"); n != 3 {
		t.Fatalf("open connections %v, want 3", n)
	}
	waitLog(t, e, `"msg":"turn connection refused"`)
	a1.conn.Close()
	e.waitMetric(t, func(v float64) bool { return v == 2 }, "portcullis_relay_connections_open")
	if !binds(dial("127.0.0.1")) {
		t.Fatal("a connection after one closed not served")
	}
}
