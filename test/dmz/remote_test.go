package dmz_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/pion/stun/v4"
	"github.com/pion/turn/v5"

	"portcullis/access/accesstest"
	"portcullis/internal/siptest"
	"portcullis/internal/turntest"
)

// The MCU media range inside org A, and an MCU's media address in it.
const (
	mcuRange = "203.0.113.32/28"
	mcuAddr  = "203.0.113.40"
)

// TestDMZRemoteUser is a remote employee on the internet using org A's edge
// in its DMZ: signing in, IM and calls with a colleague inside, TURN
// credentials from the core (MRAS SERVICE through the edge), and media
// through the edge's relay to the internal MCU media range, and to nothing
// else inside: not the core, not the edge's own internal leg or loopback.
// Real peers: coturn's turnutils_peer as the MCU's media socket, and its
// turnutils_uclient as a remote client.
func TestDMZRemoteUser(t *testing.T) {
	l := newLab(t)
	b := build(t)
	pub := accesstest.New(t)
	for _, ns := range []string{"inet", "a-int", "a-dmz"} {
		l.addNS(ns)
	}
	l.link("a-int", coreA+"/26", "a-dmz", edgeAInt+"/26")
	l.link("a-dmz", edgeAExt+"/26", "inet", routerA+"/26")
	l.run("ip", "-n", l.ns("inet"), "addr", "add", aliceAddr+"/32", "dev", "lo")
	l.run("ip", "-n", l.ns("a-int"), "addr", "add", mcuAddr+"/32", "dev", "lo")
	l.run("ip", "-n", l.ns("a-dmz"), "route", "add", "default", "via", routerA)
	// The MCUs answer the relay's address, which is on the edge's external
	// side: the internal network routes it to the edge's internal leg
	// (docs/deploy.md). Nothing inside routes to the internet.
	l.run("ip", "-n", l.ns("a-int"), "route", "add", edgeAExt+"/32", "via", edgeAInt)
	d := l.deploy(b, pub, orgSpec{name: "a", domain: "example.test", core: coreA, edgeInt: edgeAInt, edgeExt: edgeAExt, router: routerA, mcuMedia: mcuRange})

	// From the internet: the edge's SIP and TURN listeners, nothing inside.
	for addr, want := range map[string]bool{
		edgeAExt + ":5061": true, edgeAExt + ":3478": true,
		coreA + ":5061": false, coreA + ":5063": false, edgeAInt + ":5062": false,
	} {
		if got := l.reachable("inet", addr); got != want {
			t.Errorf("from the internet, %s reachable: %v, want %v", addr, got, want)
		}
	}

	// Alice signs in from the internet through the edge; bob inside, on the
	// core's users listener. The first request of each dials from its
	// namespace; the connection is then reused from anywhere.
	alice := l.phone(t, "inet", edgeAExt+":5061", pubRoots(t, pub), "sip.example.test", "sip:alice@example.test", "sip:alice@"+aliceAddr+":5061;transport=tls")
	bob := l.phone(t, "a-int", coreA+":5063", caPool(t, d.internal.CAFile), "core1.internal", "sip:bob@example.test", "sip:bob@203.0.113.20:5061;transport=tls")
	aliceUA, bobUA := alice.UA, bob.UA
	if err := status(aliceUA.Message("sip:alice@example.test", "alice", password, "sip:bob@example.test", "from the internet"), 200); err != nil {
		t.Fatalf("IM in: %v", err)
	}
	if err := status(bobUA.Message("sip:bob@example.test", "bob", password, "sip:alice@example.test", "from inside"), 200); err != nil {
		t.Fatalf("IM out: %v", err)
	}
	if got := aliceUA.WaitMessages(1, 5*time.Second); len(got) != 1 || string(got[0].Body()) != "from inside" {
		t.Fatalf("alice got %d IMs", len(got))
	}
	if got := bobUA.WaitMessages(1, 5*time.Second); len(got) != 1 || string(got[0].Body()) != "from the internet" {
		t.Fatalf("bob got %d IMs", len(got))
	}
	callBothWays(t, alice, "sip:alice@example.test", bob, "sip:bob@example.test")

	// TURN credentials: the MRAS SERVICE through the edge, answered by the
	// core with the relay's address.
	const mras = "application/msrtc-media-relay-auth+xml"
	res := aliceUA.Service("sip:alice@example.test", "alice", password, "sip:alice@example.test", mras,
		`<request requestID="1" from="sip:alice@example.test" version="1.0" to="sip:mras" xmlns="http://schemas.microsoft.com/2006/09/sip/mrasp"><credentialsRequest credentialsRequestID="2"><identity>sip:alice@example.test</identity><location>internet</location><duration>480</duration></credentialsRequest></request>`)
	if err := status(res, 200); err != nil {
		t.Fatalf("MRAS SERVICE through the edge: %v", err)
	}
	var cred struct {
		Username string `xml:"credentialsResponse>credentials>username"`
		Password string `xml:"credentialsResponse>credentials>password"`
		Relays   []struct {
			Host    string `xml:"hostName"`
			UDPPort int    `xml:"udpPort"`
			TCPPort int    `xml:"tcpPort"`
		} `xml:"credentialsResponse>mediaRelayList>mediaRelay"`
	}
	if err := xml.Unmarshal(res.Body(), &cred); err != nil || cred.Username == "" || len(cred.Relays) != 1 || cred.Relays[0].UDPPort == 0 || cred.Relays[0].TCPPort == 0 {
		t.Fatalf("MRAS answer (%v):\n%s", err, res.Body())
	}
	relayUDP := net.JoinHostPort(cred.Relays[0].Host, strconv.Itoa(cred.Relays[0].UDPPort))
	relayTCP := net.JoinHostPort(cred.Relays[0].Host, strconv.Itoa(cred.Relays[0].TCPPort))

	// The MCU's media: coturn's UDP echo peer, and a TCP echo. Canaries on
	// the inside addresses the relay must never reach count what arrives.
	peerTool, err := exec.LookPath("turnutils_peer")
	if err != nil {
		t.Fatal("turnutils_peer not found: run `make test` (it installs the Debian package coturn)")
	}
	l.start("a-int", "turnutils_peer", peerTool, "-L", mcuAddr, "-p", "3480")
	l.run("ip", "-n", l.ns("a-int"), "addr", "add", "203.0.113.50/32", "dev", "lo")
	mcuTCP := &net.TCPAddr{IP: net.ParseIP(mcuAddr), Port: 3481}
	l.tcpEcho(t, "a-int", mcuTCP.String())
	denied := []struct{ ns, addr string }{
		{"a-int", coreA + ":5004"},     // the core
		{"a-dmz", edgeAInt + ":5004"},  // the edge's internal leg
		{"a-dmz", "127.0.0.1:5004"},    // the edge's own loopback
		{"a-dmz", edgeAExt + ":5004"},  // the edge's external address (a relay loop)
		{"a-int", "203.0.113.50:5004"}, // inside, just past the MCU range
	}
	canaries := map[string]*atomic.Int32{}
	for _, c := range denied {
		canaries["udp "+c.addr] = l.udpCanary(t, c.ns, c.addr)
		canaries["tcp "+c.addr] = l.tcpCanary(t, c.ns, c.addr)
	}

	// UDP allocation from the internet: the MCU echoes through the relay.
	var udpConn net.PacketConn
	mustNS(t, l, "inet", func() (err error) { udpConn, err = net.ListenPacket("udp4", aliceAddr+":0"); return err })
	cl := turntest.Client(t, relayUDP, udpConn, cred.Username, cred.Password, "example.test")
	relayed, err := cl.Allocate()
	if err != nil {
		t.Fatalf("Allocate with the credentials the core issued: %v", err)
	}
	defer relayed.Close()
	if host, _, _ := net.SplitHostPort(relayed.LocalAddr().String()); host != edgeAExt {
		t.Fatalf("relayed address %s, want one on the edge's external address %s", relayed.LocalAddr(), edgeAExt)
	}
	mcuUDP := &net.UDPAddr{IP: net.ParseIP(mcuAddr), Port: 3480}
	echoed := false
	for i := 0; i < 20 && !echoed; i++ { // turnutils_peer may still be starting
		if _, err := relayed.WriteTo([]byte("media to the MCU"), mcuUDP); err != nil {
			t.Fatalf("send to the MCU through the relay: %v", err)
		}
		buf := make([]byte, 1500)
		_ = relayed.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		n, from, err := relayed.ReadFrom(buf)
		echoed = err == nil && string(buf[:n]) == "media to the MCU" && from.String() == mcuUDP.String()
	}
	if !echoed {
		t.Fatal("no echo from the MCU through the relay")
	}
	// Toward anything else inside: 403, over UDP and TCP allocations.
	for _, d := range denied {
		u, _ := net.ResolveUDPAddr("udp4", d.addr)
		if err := cl.CreatePermission(u); !isTURNError(err, stun.CodeForbidden) {
			t.Errorf("CreatePermission toward %s: %v, want 403", d.addr, err)
		}
		_, _ = relayed.WriteTo([]byte("intrude"), u)
	}
	var ctrl, data net.Conn
	mustNS(t, l, "inet", func() (err error) {
		if ctrl, err = net.Dial("tcp4", relayTCP); err != nil {
			return err
		}
		data, err = net.Dial("tcp4", relayTCP)
		return err
	})
	tcl := turntest.Client(t, relayTCP, turn.NewSTUNConn(ctrl), cred.Username, cred.Password, "example.test")
	alloc, err := tcl.AllocateTCP()
	if err != nil {
		t.Fatalf("TCP allocation (RFC 6062): %v", err)
	}
	defer alloc.Close()
	conn, err := alloc.DialTCPWithConn(data, "tcp4", mcuTCP)
	if err != nil {
		t.Fatalf("TCP relay to the MCU: %v", err)
	}
	if _, err := conn.Write([]byte("slides")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "slides" {
		t.Fatalf("TCP echo from the MCU through the relay: %q %v", buf, err)
	}
	conn.Close()
	for _, d := range denied {
		a, _ := net.ResolveTCPAddr("tcp4", d.addr)
		if _, err := alloc.Connect(a); err == nil || !strings.Contains(err.Error(), "403") {
			t.Errorf("Connect toward %s: %v, want 403", d.addr, err)
		}
	}

	// coturn's client from the internet, with the shared secret, to the
	// MCU's echo peer: nothing lost over UDP or TCP.
	secret, err := os.ReadFile(d.dir + "/turn.secret")
	if err != nil {
		t.Fatal(err)
	}
	uclient, err := exec.LookPath("turnutils_uclient")
	if err != nil {
		t.Fatal("turnutils_uclient not found: run `make test` (it installs the Debian package coturn)")
	}
	totals := regexp.MustCompile(`tot_send_msgs=(\d+), tot_recv_msgs=(\d+)`)
	for _, mode := range [][]string{{}, {"-t"}} {
		args := append([]string{uclient, "-W", strings.TrimSpace(string(secret)), "-u", "carol", "-n", "50", "-l", "170", "-m", "1",
			"-e", mcuAddr, "-r", "3480", "-p", "3478"}, mode...)
		out := l.exec("inet", append(args, edgeAExt)...)
		sr := totals.FindAllStringSubmatch(out, -1)
		if len(sr) == 0 || sr[len(sr)-1][1] != sr[len(sr)-1][2] || sr[len(sr)-1][1] == "0" || !strings.Contains(out, "Total lost packets 0 (") {
			t.Errorf("turnutils_uclient %v from the internet to the MCU: want everything echoed:\n%s", mode, lastLines(out, 15))
		}
	}

	time.Sleep(300 * time.Millisecond)
	for addr, c := range canaries {
		if n := c.Load(); n != 0 {
			t.Errorf("%s: %d packets or connections reached this denied address", addr, n)
		}
	}
	if !strings.Contains(d.edge.output(), "turn peer refused") {
		t.Error("the edge did not log the refused peers")
	}
}

// phone is a user's phone in a namespace, connected over TLS to server
// (checked against roots and name) and registered there as aor with
// contact; its first request dials from the namespace.
func (l *lab) phone(t *testing.T, ns, server string, roots *x509.CertPool, name, aor, contact string) *siptest.Phone {
	t.Helper()
	var p *siptest.Phone
	user := strings.TrimPrefix(strings.Split(aor, "@")[0], "sip:")
	mustNS(t, l, ns, func() error {
		ua := siptest.New(t, server, &tls.Config{RootCAs: roots, ServerName: name, MinVersion: tls.VersionTLS12})
		p = siptest.NewPhone(ua, contact, true)
		return status(ua.Register(aor, user, password, "<"+contact+">"), 200)
	})
	return p
}

// callBothWays has a call a → b and one b → a, each answered, ACKed and
// hung up by its caller (the callee gets the BYE).
func callBothWays(t *testing.T, a *siptest.Phone, aAOR string, b *siptest.Phone, bAOR string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, c := range []struct {
		caller, callee *siptest.Phone
		from, to       string
	}{{a, b, aAOR, bAOR}, {b, a, bAOR, aAOR}} {
		user := strings.TrimPrefix(strings.Split(c.from, "@")[0], "sip:")
		sess := c.caller.CallAcked(ctx, t, c.callee, c.from, user, password, c.to)
		byes := c.callee.Byes.Load()
		if err := sess.Bye(ctx); err != nil {
			t.Fatalf("%s hangs up on %s: %v", c.from, c.to, err)
		}
		siptest.Eventually(t, c.to+" gets the BYE", func() bool { return c.callee.Byes.Load() == byes+1 })
	}
}

// caPool is a pool holding the CA in file.
func caPool(t *testing.T, file string) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if pem, err := os.ReadFile(file); err != nil || !p.AppendCertsFromPEM(pem) {
		t.Fatalf("CA %s: %v", file, err)
	}
	return p
}

// mustNS runs fn in a namespace and fails the test with its error.
func mustNS(t *testing.T, l *lab, ns string, fn func() error) {
	t.Helper()
	if err := l.inNS(ns, fn); err != nil {
		t.Fatalf("in %s: %v", ns, err)
	}
}

// status is nil when res has the wanted status code.
func status(res *sip.Response, want int) error {
	if res.StatusCode != want {
		return fmt.Errorf("%d %s, want %d", res.StatusCode, res.Reason, want)
	}
	return nil
}

// isTURNError says whether err is pion's error response with code.
func isTURNError(err error, code stun.ErrorCode) bool {
	var te *stun.TurnError
	return errors.As(err, &te) && te.ErrorCodeAttr.Code == code
}

// udpCanary listens on addr in a namespace and counts the datagrams that
// arrive, until the test ends.
func (l *lab) udpCanary(t *testing.T, ns, addr string) *atomic.Int32 {
	t.Helper()
	var n atomic.Int32
	var pc net.PacketConn
	mustNS(t, l, ns, func() (err error) { pc, err = net.ListenPacket("udp4", addr); return err })
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			n.Add(1)
		}
	}()
	return &n
}

// tcpCanary is udpCanary for TCP connections.
func (l *lab) tcpCanary(t *testing.T, ns, addr string) *atomic.Int32 {
	var n atomic.Int32
	l.serveTCP(t, ns, addr, func(c net.Conn) { n.Add(1); c.Close() })
	return &n
}

// tcpEcho echoes every TCP connection to addr in a namespace.
func (l *lab) tcpEcho(t *testing.T, ns, addr string) {
	l.serveTCP(t, ns, addr, func(c net.Conn) { _, _ = io.Copy(c, c); c.Close() })
}

// serveTCP listens on addr in a namespace and hands each connection to
// its own goroutine running handle, until the test ends.
func (l *lab) serveTCP(t *testing.T, ns, addr string, handle func(net.Conn)) {
	t.Helper()
	var ln net.Listener
	mustNS(t, l, ns, func() (err error) { ln, err = net.Listen("tcp4", addr); return err })
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
}
