package relay_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v4"
	"go.uber.org/goleak"

	"portcullis/access"
	"portcullis/internal/turntest"
	"portcullis/relay"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Every TURN method over UDP and TCP: Allocate, CreatePermission, Send and
// Data indications, ChannelBind and ChannelData both ways, Refresh, and
// deletion with lifetime 0.
func TestMethodsOverUDPAndTCP(t *testing.T) {
	e := start(t, testConfig(t))
	peer := newEchoPeer(t, "127.0.0.1:0")
	for _, tc := range []struct{ network, addr string }{{"udp", e.udp}, {"tcp", e.tcp}} {
		t.Run(tc.network, func(t *testing.T) {
			c := dialClient(t, tc.network, tc.addr, e.cred("alice-"+tc.network))
			res := c.request(stun.MethodAllocate, udpTransport, lifetimeAttr(300))
			mustOK(t, "Allocate", res)
			relayAddr := relayedAddr(t, res)
			if relayAddr.Addr() != netip.MustParseAddr("127.0.0.1") || relayAddr.Port() < 50000 || relayAddr.Port() > 59999 {
				t.Fatalf("relayed address %s outside the configured range", relayAddr)
			}

			mustOK(t, "CreatePermission", c.request(stun.MethodCreatePermission, peerAttr(peer.addr())))
			c.send(stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodSend, stun.ClassIndication),
				peerAttr(peer.addr()), attr{stun.AttrData, []byte("hello via send")}))
			data := c.read(2 * time.Second)
			if data == nil || data.Type != stun.NewType(stun.MethodData, stun.ClassIndication) {
				t.Fatalf("no Data indication: %v", data)
			}
			if v, _ := data.Get(stun.AttrData); string(v) != "hello via send" {
				t.Fatalf("data %q", v)
			}

			mustOK(t, "ChannelBind", c.request(stun.MethodChannelBind, channelAttr(0x4001), peerAttr(peer.addr())))
			payload := []byte("hello via channel")
			if _, err := c.conn.Write(channelFrame(0x4001, payload)); err != nil {
				t.Fatal(err)
			}
			back := c.readRaw(2 * time.Second)
			if len(back) < 4 || binary.BigEndian.Uint16(back) != 0x4001 || !bytes.Equal(back[4:4+binary.BigEndian.Uint16(back[2:])], payload) {
				t.Fatalf("ChannelData back: %x", back)
			}

			res = c.request(stun.MethodRefresh, lifetimeAttr(600))
			mustOK(t, "Refresh", res)
			var lt [4]byte
			if v, err := res.Get(stun.AttrLifetime); err != nil || copy(lt[:], v) != 4 || binary.BigEndian.Uint32(lt[:]) != 600 {
				t.Fatalf("Refresh lifetime %x %v", v, err)
			}
			mustOK(t, "Refresh(0)", c.request(stun.MethodRefresh, lifetimeAttr(0)))
		})
	}
	e.waitMetric(t, func(v float64) bool { return v == 0 }, "portcullis_relay_allocations_active")
	if got := e.metric("portcullis_relay_allocations_created_total"); got != 2 {
		t.Fatalf("created %v", got)
	}
	for _, dir := range []string{"to_peer", "to_client"} {
		if got := e.metric("portcullis_relay_packets_total", "direction", dir); got != 4 {
			t.Errorf("packets %s = %v, want 4", dir, got)
		}
	}
	// The line is written just after the gauge drops: wait for it.
	waitLog(t, e, `"msg":"allocation ended","component":"relay","transport":"udp","user":"alice-udp"`)
	waitLog(t, e, `"reason":"deleted_by_client"`)
	if !strings.Contains(e.logs.String(), `"bytes_to_peer":31`) {
		t.Fatalf("allocation log without byte counts:\n%s", e.logs.String())
	}
}

// An allocation that is not refreshed ends at its lifetime (RFC 8656 §7.2).
func TestAllocationExpires(t *testing.T) {
	e := start(t, testConfig(t))
	c := dialClient(t, "udp", e.udp, e.cred("victor"))
	res := c.request(stun.MethodAllocate, udpTransport, lifetimeAttr(1))
	mustOK(t, "Allocate", res)
	e.waitMetric(t, func(v float64) bool { return v == 1 }, "portcullis_relay_allocations_active")
	e.waitMetric(t, func(v float64) bool { return v == 0 }, "portcullis_relay_allocations_active")
	waitLog(t, e, `"user":"victor"`)
	waitLog(t, e, `"reason":"expired_or_closed"`)
	if got := code(c.request(stun.MethodRefresh, lifetimeAttr(600))); got != stun.CodeAllocMismatch {
		t.Fatalf("Refresh after expiry: %d, want 437", got)
	}
}

// pion's own client, end to end over UDP and TLS.
func TestPionClient(t *testing.T) {
	e := start(t, testConfig(t))
	peer := newEchoPeer(t, "127.0.0.1:0")
	cred := e.cred("bob")
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cl := turntest.Client(t, e.udp, conn, cred.Username, cred.Password, realm)
	mapped, err := cl.SendBindingRequest()
	if err != nil || !strings.HasPrefix(mapped.String(), "127.0.0.1:") {
		t.Fatalf("binding: %v %v", mapped, err)
	}
	rc, err := cl.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	buf := make([]byte, 1500)
	for i := range 20 { // pion's client binds a channel after the first packets
		if _, err := rc.WriteTo([]byte{byte(i)}, net.UDPAddrFromAddrPort(peer.addr())); err != nil {
			t.Fatal(err)
		}
		_ = rc.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, from, err := rc.ReadFrom(buf)
		if err != nil || n != 1 || buf[0] != byte(i) || from.String() != peer.addr().String() {
			t.Fatalf("round trip %d: %d %v %v", i, n, from, err)
		}
	}
}

func TestTLSAndIPv6(t *testing.T) {
	c := testConfig(t)
	e := start(t, c)
	cred := e.cred("carol")
	tc, err := tlsDial(e.tls)
	if err != nil {
		t.Fatal(err)
	}
	cl := &client{t: t, conn: tc, stream: newReader(tc), username: cred.Username, password: cred.Password}
	t.Cleanup(func() { tc.Close() })
	mustOK(t, "Allocate over TLS", cl.request(stun.MethodAllocate, udpTransport))

	if c.Relay.BindIPv6 == "" {
		t.Log("no IPv6 loopback on this host: IPv6 relay not exercised")
		return
	}
	peer := newEchoPeer(t, "[::1]:0")
	u := dialClient(t, "udp", e.udp, e.cred("carol6"))
	res := u.request(stun.MethodAllocate, udpTransport, ipv6Family)
	mustOK(t, "Allocate IPv6", res)
	if ra := relayedAddr(t, res); !ra.Addr().Is6() {
		t.Fatalf("relayed address %s is not IPv6", ra)
	}
	mustOK(t, "ChannelBind IPv6", u.request(stun.MethodChannelBind, channelAttr(0x4000), peerAttr(peer.addr())))
	if _, err := u.conn.Write([]byte{0x40, 0x00, 0x00, 0x02, 'h', 'i', 0, 0}); err != nil {
		t.Fatal(err)
	}
	if back := u.readRaw(2 * time.Second); len(back) < 6 || string(back[4:6]) != "hi" {
		t.Fatalf("IPv6 channel data back: %x", back)
	}
}

// RFC 6062: a TCP allocation, Connect to a TCP peer, ConnectionBind.
func TestTCPAllocation(t *testing.T) {
	e := start(t, testConfig(t))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	from := make(chan net.Addr, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		from <- c.RemoteAddr()
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		_, _ = c.Write(bytes.ToUpper(buf[:n]))
	}()
	conn, relayed, _ := tcpRelay(t, e, e.cred("dave"), ln.Addr())
	if _, err := conn.Write([]byte("over tcp")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, err := conn.Read(buf)
	if err != nil || string(buf[:n]) != "OVER TCP" {
		t.Fatalf("tcp relay: %q %v", buf[:n], err)
	}
	// RFC 6062 §4.3: the peer sees the connection come from the relayed
	// transport address the client was given.
	if got := (<-from).String(); got != relayed.String() {
		t.Fatalf("peer sees the connection from %s, the relayed address is %s", got, relayed)
	}
}

// A peer outside the allowed ranges: 403, and not one packet reaches it.
func TestDeniedPeers(t *testing.T) {
	e := start(t, testConfig(t))
	inside := newEchoPeer(t, "127.0.0.2:0") // loopback, but not the allowed 127.0.0.1
	c := dialClient(t, "udp", e.udp, e.cred("mallory"))
	mustOK(t, "Allocate", c.request(stun.MethodAllocate, udpTransport))
	for _, p := range []netip.AddrPort{
		inside.addr(),
		netip.MustParseAddrPort("10.1.2.3:5000"),
		netip.MustParseAddrPort("169.254.169.254:80"),
		netip.AddrPortFrom(netip.AddrFrom16(netip.MustParseAddr("127.0.0.2").As16()), inside.addr().Port()), // ::ffff:127.0.0.2
	} {
		if got := code(c.request(stun.MethodCreatePermission, peerAttr(p))); got != stun.CodeForbidden {
			t.Errorf("CreatePermission %s: %d, want 403", p, got)
		}
		if got := code(c.request(stun.MethodChannelBind, channelAttr(0x4002), peerAttr(p))); got != stun.CodeForbidden {
			t.Errorf("ChannelBind %s: %d, want 403", p, got)
		}
	}
	// Send indications and ChannelData toward it anyway: nothing arrives.
	for range 5 {
		c.send(stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodSend, stun.ClassIndication),
			peerAttr(inside.addr()), attr{stun.AttrData, []byte("x")}))
		_, _ = c.conn.Write([]byte{0x40, 0x02, 0, 1, 'x', 0, 0, 0})
	}
	time.Sleep(300 * time.Millisecond)
	if n := inside.got.Load(); n != 0 {
		t.Fatalf("%d packets reached a denied peer", n)
	}
	if !logHas(e, `"msg":"turn peer refused"`) {
		t.Fatal("refusal not logged")
	}
}

func TestQuotaCapacityAndAlternate(t *testing.T) {
	cfg := testConfig(t)
	cfg.Quota.PerUser = 2
	cfg.Quota.Total = 3
	e := start(t, cfg)
	for i := range 2 {
		mustOK(t, "Allocate", dialClient(t, "udp", e.udp, e.cred("erin")).request(stun.MethodAllocate, udpTransport))
		_ = i
	}
	if got := code(dialClient(t, "udp", e.udp, e.cred("erin")).request(stun.MethodAllocate, udpTransport)); got != stun.CodeAllocQuotaReached {
		t.Fatalf("over per-user quota: %d, want 486", got)
	}
	mustOK(t, "Allocate", dialClient(t, "udp", e.udp, e.cred("frank")).request(stun.MethodAllocate, udpTransport))
	if got := code(dialClient(t, "udp", e.udp, e.cred("grace")).request(stun.MethodAllocate, udpTransport)); got != stun.CodeInsufficientCapacity {
		t.Fatalf("over total: %d, want 508", got)
	}
	if e.metric("portcullis_relay_quota_refusals_total", "quota", "user") != 1 || e.metric("portcullis_relay_quota_refusals_total", "quota", "total") != 1 {
		t.Fatal("quota refusals not counted")
	}

	cfg = testConfig(t)
	cfg.Quota.Total = 1
	cfg.AlternateServer = "127.0.0.1:3479"
	e2 := start(t, cfg)
	mustOK(t, "Allocate", dialClient(t, "udp", e2.udp, e2.cred("heidi")).request(stun.MethodAllocate, udpTransport))
	res := dialClient(t, "udp", e2.udp, e2.cred("ivan")).request(stun.MethodAllocate, udpTransport)
	var alt stun.AlternateServer
	if code(res) != stun.CodeTryAlternate || alt.GetFrom(res) != nil || net.JoinHostPort(alt.IP.String(), strconv.Itoa(alt.Port)) != "127.0.0.1:3479" {
		t.Fatalf("want 300 with ALTERNATE-SERVER 127.0.0.1:3479, got %d %v", code(res), alt)
	}
}

// One user's Allocates arriving together on several connections (UDP and
// TCP) get exactly the quota's allocations and 486 for the rest: pion asks
// the quota before it creates an allocation, and a count of active ones
// alone let three through a quota of two.
func TestQuotaConcurrentAllocates(t *testing.T) {
	cfg := testConfig(t)
	cfg.Quota.PerUser = 2
	e := start(t, cfg)
	for round := range 5 {
		user := "rush" + strconv.Itoa(round)
		_, codes := allocateAtOnce(t, e, func(int) string { return user })
		if ok, quota := count(codes, 0), count(codes, stun.CodeAllocQuotaReached); ok != 2 || quota != len(codes)-2 {
			t.Fatalf("round %d: %d allocated and %d refused 486 of %d at once (%v), want 2 and %d", round, ok, quota, len(codes), codes, len(codes)-2)
		}
	}
}

// Allocates arriving together cannot pass the total cap: each round, of
// twelve users' Allocates at once (UDP and TCP clients) with three places
// left, three are allocated and the rest get 508 (5 to 8 were allocated
// when only the front filter checked the cap).
func TestTotalCapConcurrentAllocates(t *testing.T) {
	cfg := testConfig(t)
	cfg.Quota.Total = 3
	e := start(t, cfg)
	for round := range 5 {
		cs, codes := allocateAtOnce(t, e, func(i int) string { return "rush" + strconv.Itoa(round) + "-" + strconv.Itoa(i) })
		if ok, full := count(codes, 0), count(codes, stun.CodeInsufficientCapacity); ok != 3 || full != len(codes)-3 {
			t.Fatalf("round %d: %d allocated and %d refused 508 of %d at once (%v), want 3 and %d", round, ok, full, len(codes), codes, len(codes)-3)
		}
		for i, c := range cs { // free the places for the next round
			if codes[i] == 0 {
				mustOK(t, "Refresh(0)", c.request(stun.MethodRefresh, lifetimeAttr(0)))
			}
		}
		e.waitMetric(t, func(v float64) bool { return v == 0 }, "portcullis_relay_allocations_active")
	}
}

// allocateAtOnce sends twelve Allocates at once, from UDP and TCP clients
// in turn, client i as user(i), and returns the clients and their answers
// (0: allocated).
func allocateAtOnce(t *testing.T, e *env, user func(i int) string) ([]*client, []stun.ErrorCode) {
	cs := make([]*client, 12)
	for i := range cs {
		if i%2 == 0 {
			cs[i] = dialClient(t, "udp", e.udp, e.cred(user(i)))
		} else {
			cs[i] = dialClient(t, "tcp", e.tcp, e.cred(user(i)))
		}
	}
	codes := make([]stun.ErrorCode, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Add(1)
		go func() { defer wg.Done(); codes[i] = code(c.request(stun.MethodAllocate, udpTransport)) }()
	}
	wg.Wait()
	return cs, codes
}

// count is how many of codes are c.
func count(codes []stun.ErrorCode, c stun.ErrorCode) int {
	n := 0
	for _, x := range codes {
		if x == c {
			n++
		}
	}
	return n
}

func TestCredentialsAndNonces(t *testing.T) {
	cfg := testConfig(t)
	e := start(t, cfg)
	expired := access.IssueTURN(e.secret, "judy", -time.Minute, time.Now())
	c := dialClient(t, "udp", e.udp, expired)
	res := c.request(stun.MethodAllocate, udpTransport)
	var r stun.Realm
	var n stun.Nonce
	if code(res) != stun.CodeUnauthorized || r.GetFrom(res) != nil || n.GetFrom(res) != nil {
		t.Fatalf("expired credential: %d (realm %v nonce %v), want 401 with REALM and NONCE", code(res), r, n)
	}
	if e.metric("portcullis_relay_auth_failures_total", "reason", "expired") != 1 {
		t.Fatal("expired not counted")
	}
	wrong := e.cred("judy")
	wrong.Password = "not-the-password"
	if got := code(dialClient(t, "udp", e.udp, wrong).request(stun.MethodAllocate, udpTransport)); got != stun.CodeUnauthorized {
		t.Fatalf("wrong password: %d, want 401", got)
	}
	// Over TCP too.
	if got := code(dialClient(t, "tcp", e.tcp, expired).request(stun.MethodAllocate, udpTransport)); got != stun.CodeUnauthorized {
		t.Fatalf("expired over TCP: %d, want 401", got)
	}

	// A nonce this server did not make (another instance's) is stale: 438.
	other := start(t, testConfig(t))
	oc := dialClient(t, "udp", other.udp, other.cred("x"))
	oc.send(stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest), stun.Fingerprint))
	var foreign stun.Nonce
	_ = foreign.GetFrom(oc.read(2 * time.Second))
	good := dialClient(t, "udp", e.udp, e.cred("judy"))
	good.realm, good.nonce = stun.NewRealm(realm), foreign
	res = good.authed(stun.MethodAllocate, udpTransport)
	if code(res) != stun.CodeStaleNonce || n.GetFrom(res) != nil {
		t.Fatalf("foreign nonce: %d, want 438 with a fresh NONCE", code(res))
	}
	good.nonce = n
	mustOK(t, "Allocate after 438", good.authed(stun.MethodAllocate, udpTransport))
}

func TestBadInput(t *testing.T) {
	e := start(t, testConfig(t))
	c := dialClient(t, "udp", e.udp, e.cred("oscar"))
	// An unknown method in a request: 400.
	c.send(stun.MustBuild(stun.TransactionID, stun.NewType(stun.Method(0x0ff), stun.ClassRequest), stun.Fingerprint))
	if res := c.read(2 * time.Second); res == nil || code(res) != stun.CodeBadRequest {
		t.Fatalf("unknown method: %v", res)
	}
	// Malformed datagrams: no answer, counted, the relay keeps serving.
	for _, junk := range [][]byte{{}, {1}, []byte("GET / HTTP/1.1\r\n\r\n"), bytes.Repeat([]byte{0}, 40), {0x40, 0x00, 0xff, 0xff, 1}} {
		_, _ = c.conn.Write(junk)
	}
	if res := c.readRaw(300 * time.Millisecond); res != nil {
		t.Fatalf("answer to junk: %x", res)
	}
	e.waitMetric(t, func(v float64) bool { return v >= 3 }, "portcullis_relay_dropped_packets_total", "reason", "malformed")
	mustOK(t, "Allocate after junk", c.request(stun.MethodAllocate, udpTransport))

	// Junk on TCP closes the connection.
	tc, err := net.Dial("tcp", e.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	_, _ = tc.Write([]byte("\xff\xff\xff\xff garbage"))
	_ = tc.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := tc.Read(make([]byte, 10)); err == nil {
		t.Fatal("TCP connection with junk stayed open")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("TCP connection with junk not closed")
	}
}

// A flood of unauthenticated Allocates from one source is answered at the
// configured rate, not one answer per request.
func TestUnauthenticatedAnswersAreRateLimited(t *testing.T) {
	cfg := testConfig(t)
	cfg.Unauthenticated = relay.RateConfig{PerSecond: 1, Burst: 5}
	e := start(t, cfg)
	c := dialClient(t, "udp", e.udp, e.cred("x"))
	for range 200 {
		c.send(stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest), stun.Fingerprint))
	}
	answers := 0
	for c.readRaw(300*time.Millisecond) != nil {
		answers++
	}
	if answers < 5 || answers > 7 {
		t.Fatalf("%d answers to 200 unauthenticated requests, want the burst of 5 (+1 refill)", answers)
	}
	if e.metric("portcullis_relay_unauthenticated_answers_suppressed_total") < 190 {
		t.Fatal("suppressed answers not counted")
	}
	// Over TCP the source is proven (no amplification): every request is
	// answered, so clients behind one NAT are not locked out.
	tc := dialClient(t, "tcp", e.tcp, e.cred("x"))
	for range 20 {
		tc.send(stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest), stun.Fingerprint))
	}
	for i := range 20 {
		if res := tc.read(2 * time.Second); res == nil || code(res) != stun.CodeUnauthorized {
			t.Fatalf("TCP answer %d: %v", i, res)
		}
	}
}

func TestBandwidthCap(t *testing.T) {
	cfg := testConfig(t)
	cfg.Bandwidth.PerAllocationKbps = 80 // 10 kB/s, burst 10 kB
	e := start(t, cfg)
	peer := newEchoPeer(t, "127.0.0.1:0")
	c := dialClient(t, "udp", e.udp, e.cred("peggy"))
	mustOK(t, "Allocate", c.request(stun.MethodAllocate, udpTransport))
	mustOK(t, "ChannelBind", c.request(stun.MethodChannelBind, channelAttr(0x4000), peerAttr(peer.addr())))
	frame := channelFrame(0x4000, make([]byte, 1000))
	for range 100 {
		_, _ = c.conn.Write(frame)
	}
	time.Sleep(300 * time.Millisecond)
	got := peer.got.Load()
	if got < 5 || got > 20 {
		t.Fatalf("peer got %d of 100 1000-byte packets under a 10 kB/s cap", got)
	}
	e.waitMetric(t, func(v float64) bool { return v >= 80 }, "portcullis_relay_dropped_packets_total", "reason", "bandwidth")
}

// The per-user cap is shared by all of a user's allocations.
func TestPerUserBandwidthCap(t *testing.T) {
	cfg := testConfig(t)
	cfg.Bandwidth.PerUserKbps = 80 // 10 kB/s for the user, whatever the allocation
	e := start(t, cfg)
	peer := newEchoPeer(t, "127.0.0.1:0")
	frame := channelFrame(0x4000, make([]byte, 1000))
	var clients []*client
	for range 3 {
		c := dialClient(t, "udp", e.udp, e.cred("trent"))
		mustOK(t, "Allocate", c.request(stun.MethodAllocate, udpTransport))
		mustOK(t, "ChannelBind", c.request(stun.MethodChannelBind, channelAttr(0x4000), peerAttr(peer.addr())))
		clients = append(clients, c)
	}
	for range 40 {
		for _, c := range clients {
			_, _ = c.conn.Write(frame)
		}
	}
	time.Sleep(300 * time.Millisecond)
	if got := peer.got.Load(); got < 5 || got > 20 {
		t.Fatalf("peer got %d of 120 packets from one user's three allocations under a 10 kB/s user cap", got)
	}
	// Another user is not held back by trent's cap.
	other := dialClient(t, "udp", e.udp, e.cred("uma"))
	mustOK(t, "Allocate", other.request(stun.MethodAllocate, udpTransport))
	mustOK(t, "ChannelBind", other.request(stun.MethodChannelBind, channelAttr(0x4000), peerAttr(peer.addr())))
	before := peer.got.Load()
	for range 5 {
		_, _ = other.conn.Write(frame)
	}
	time.Sleep(200 * time.Millisecond)
	if peer.got.Load()-before != 5 {
		t.Fatalf("another user's packets dropped: %d of 5", peer.got.Load()-before)
	}
}

func TestDrainRefusesNewAllocationsAndWaits(t *testing.T) {
	e := start(t, testConfig(t))
	c := dialClient(t, "udp", e.udp, e.cred("quinn"))
	mustOK(t, "Allocate", c.request(stun.MethodAllocate, udpTransport))
	done := make(chan error, 1)
	go func() {
		ctx, cancel := contextWithTimeout(5 * time.Second)
		defer cancel()
		done <- e.srv.Drain(ctx)
	}()
	time.Sleep(50 * time.Millisecond)
	if got := code(dialClient(t, "udp", e.udp, e.cred("rita")).request(stun.MethodAllocate, udpTransport)); got != stun.CodeInsufficientCapacity {
		t.Fatalf("Allocate while draining: %d, want 508", got)
	}
	select {
	case <-done:
		t.Fatal("drain returned while an allocation was active")
	default:
	}
	mustOK(t, "Refresh(0)", c.request(stun.MethodRefresh, lifetimeAttr(0)))
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("drain did not end after the last allocation")
	}
}
