package relay_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/stun/v4"
	"github.com/prometheus/client_golang/prometheus"

	"portcullis/access"
	"portcullis/access/accesstest"
	"portcullis/internal/lifecycle"
	"portcullis/internal/ops"
	"portcullis/internal/testlog"
	"portcullis/relay"
)

const realm = "example.test"

type env struct {
	srv    *relay.Server
	reg    *prometheus.Registry
	secret []byte
	udp    string
	tcp    string
	tls    string
	logs   *testlog.Buffer
}

// testConfig is a relay on loopback that may reach 127.0.0.1 (only).
func testConfig(t testing.TB) relay.Config {
	t.Helper()
	dir := t.TempDir()
	secret := filepath.Join(dir, "turn.secret")
	if err := access.NewTURNSecret(secret); err != nil {
		t.Fatal(err)
	}
	pki := accesstest.New(t)
	files := pki.Node(t, "turn.example.test")
	c := relay.DefaultConfig()
	c.Enabled = true
	c.Realm = realm
	c.SecretFile = secret
	c.ListenUDP = []string{"127.0.0.1:0"}
	c.ListenTCP = []string{"127.0.0.1:0"}
	c.ListenTLS = []string{"127.0.0.1:0"}
	c.TLSCertFile, c.TLSKeyFile = files.CertFile, files.KeyFile
	c.UDPSockets = 2
	c.Relay = relay.RelayConfig{BindIPv4: "127.0.0.1", PortMin: 50000, PortMax: 59999}
	if ipv6Loopback() {
		c.Relay.BindIPv6 = "::1"
	}
	c.AllowedPeers = []string{"127.0.0.1/32", "::1"}
	return c
}

func ipv6Loopback() bool {
	l, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func start(t testing.TB, c relay.Config) *env {
	t.Helper()
	logs := &testlog.Buffer{}
	reg := ops.NewRegistry()
	srv, err := relay.Start(c, lifecycle.Deps{Log: slog.New(slog.NewJSONHandler(logs, nil)), Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	secret, _ := access.LoadTURNSecret(c.SecretFile)
	e := &env{srv: srv, reg: reg, secret: secret, logs: logs}
	for _, l := range srv.Listeners() {
		switch l.Protocol {
		case "turn-udp":
			e.udp = l.Address
		case "turn-tcp":
			e.tcp = l.Address
		case "turn-tls":
			e.tls = l.Address
		}
	}
	return e
}

// metric returns the value of a counter or gauge series, 0 when absent.
func (e *env) metric(name string, labels ...string) float64 {
	mfs, _ := e.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			if m.Counter != nil {
				return m.Counter.GetValue()
			}
			return m.Gauge.GetValue()
		}
	}
	return 0
}

func (e *env) waitMetric(t testing.TB, ok func(float64) bool, name string, labels ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok(e.metric(name, labels...)) {
		if time.Now().After(deadline) {
			t.Fatalf("%s%v = %v", name, labels, e.metric(name, labels...))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// echoPeer is a UDP peer that sends every datagram back and counts them.
type echoPeer struct {
	conn *net.UDPConn
	got  atomic.Int64
}

func newEchoPeer(t testing.TB, addr string) *echoPeer {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	p := &echoPeer{conn: c}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			p.got.Add(1)
			_, _ = c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return p
}

func (p *echoPeer) addr() netip.AddrPort { return p.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// client is a raw TURN client: every request and answer is visible.
type client struct {
	t        testing.TB
	conn     net.Conn
	stream   *bufio.Reader // nil for UDP
	username string
	password string
	nonce    stun.Nonce
	realm    stun.Realm
}

func dialClient(t testing.TB, network, addr string, cred access.TURNCredential) *client {
	t.Helper()
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	cl := &client{t: t, conn: c, username: cred.Username, password: cred.Password}
	if network == "tcp" {
		cl.stream = bufio.NewReader(c)
	}
	return cl
}

func (e *env) cred(user string) access.TURNCredential {
	return access.IssueTURN(e.secret, user, time.Hour, time.Now())
}

type attr struct {
	t stun.AttrType
	v []byte
}

func (a attr) AddTo(m *stun.Message) error { m.Add(a.t, a.v); return nil }

func peerAttr(ap netip.AddrPort) stun.Setter {
	return setterFunc(func(m *stun.Message) error {
		return stun.XORMappedAddress{IP: ap.Addr().AsSlice(), Port: int(ap.Port())}.AddToAs(m, stun.AttrXORPeerAddress)
	})
}

type setterFunc func(m *stun.Message) error

func (f setterFunc) AddTo(m *stun.Message) error { return f(m) }

var (
	udpTransport = attr{stun.AttrRequestedTransport, []byte{17, 0, 0, 0}}
	ipv6Family   = attr{stun.AttrRequestedAddressFamily, []byte{2, 0, 0, 0}}
)

func lifetimeAttr(s uint32) stun.Setter {
	v := make([]byte, 4)
	binary.BigEndian.PutUint32(v, s)
	return attr{stun.AttrLifetime, v}
}

func channelAttr(n uint16) stun.Setter {
	return attr{stun.AttrChannelNumber, []byte{byte(n >> 8), byte(n), 0, 0}}
}

// send writes a message and returns its raw bytes.
func (c *client) send(m *stun.Message) {
	c.t.Helper()
	if _, err := c.conn.Write(m.Raw); err != nil {
		c.t.Fatal(err)
	}
}

// read returns the next STUN message, or nil after timeout.
func (c *client) read(timeout time.Duration) *stun.Message {
	c.t.Helper()
	raw := c.readRaw(timeout)
	if raw == nil {
		return nil
	}
	m := &stun.Message{Raw: raw}
	if err := m.Decode(); err != nil {
		c.t.Fatalf("undecodable answer %x: %v", raw, err)
	}
	return m
}

func (c *client) readRaw(timeout time.Duration) []byte {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	if c.stream == nil {
		buf := make([]byte, 2048)
		n, err := c.conn.Read(buf)
		if err != nil {
			return nil
		}
		return buf[:n]
	}
	hdr := make([]byte, 4)
	if _, err := io.ReadFull(c.stream, hdr); err != nil {
		return nil
	}
	size := int(binary.BigEndian.Uint16(hdr[2:4]))
	if hdr[0]>>6 == 0 {
		size += 16
	} else {
		size = (size + 3) &^ 3
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(c.stream, body); err != nil {
		return nil
	}
	return append(hdr, body...)
}

// request sends method with attrs and long-term credentials (after a first
// unauthenticated try to learn realm and nonce) and returns the answer.
func (c *client) request(method stun.Method, attrs ...stun.Setter) *stun.Message {
	c.t.Helper()
	if c.nonce == nil {
		m := stun.MustBuild(stun.TransactionID, stun.NewType(method, stun.ClassRequest), stun.Fingerprint)
		c.send(m)
		res := c.read(2 * time.Second)
		if res == nil || code(res) != stun.CodeUnauthorized {
			c.t.Fatalf("first %s: want 401, got %v", method, res)
		}
		_ = c.nonce.GetFrom(res)
		_ = c.realm.GetFrom(res)
	}
	res := c.authed(method, attrs...)
	if code(res) == stun.CodeStaleNonce {
		_ = c.nonce.GetFrom(res)
		res = c.authed(method, attrs...)
	}
	return res
}

func (c *client) authed(method stun.Method, attrs ...stun.Setter) *stun.Message {
	c.t.Helper()
	setters := []stun.Setter{stun.TransactionID, stun.NewType(method, stun.ClassRequest)}
	setters = append(setters, attrs...)
	setters = append(setters, stun.NewUsername(c.username), c.realm, c.nonce,
		stun.NewLongTermIntegrity(c.username, c.realm.String(), c.password), stun.Fingerprint)
	m := stun.MustBuild(setters...)
	c.send(m)
	for {
		res := c.read(2 * time.Second)
		if res == nil {
			c.t.Fatalf("%s: no answer", method)
		}
		if res.TransactionID == m.TransactionID {
			return res
		}
	}
}

// code is the answer's error code, 0 for success.
func code(m *stun.Message) stun.ErrorCode {
	if m.Type.Class == stun.ClassSuccessResponse {
		return 0
	}
	var ec stun.ErrorCodeAttribute
	if err := ec.GetFrom(m); err != nil {
		return -1
	}
	return ec.Code
}

func relayedAddr(t testing.TB, m *stun.Message) netip.AddrPort {
	t.Helper()
	var a stun.XORMappedAddress
	if err := a.GetFromAs(m, stun.AttrXORRelayedAddress); err != nil {
		t.Fatalf("no XOR-RELAYED-ADDRESS: %v", err)
	}
	ip, _ := netip.AddrFromSlice(a.IP)
	return netip.AddrPortFrom(ip.Unmap(), uint16(a.Port))
}

func mustOK(t testing.TB, what string, m *stun.Message) {
	t.Helper()
	if c := code(m); c != 0 {
		t.Fatalf("%s: error %d", what, c)
	}
}

func logHas(e *env, s string) bool { return strings.Contains(e.logs.String(), s) }

// waitLog waits (bounded) for a log line containing s.
func waitLog(t *testing.T, e *env, s string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !logHas(e, s) {
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %s in:\n%s", s, e.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func tlsDial(addr string) (*tls.Conn, error) {
	return tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}) //nolint:gosec // test client of a test CA
}

func newReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// channelFrame is a ChannelData message (RFC 8656 §12.4), padded to 4 bytes.
func channelFrame(number uint16, payload []byte) []byte {
	f := make([]byte, 4+(len(payload)+3)&^3)
	binary.BigEndian.PutUint16(f[0:], number)
	binary.BigEndian.PutUint16(f[2:], uint16(len(payload)))
	copy(f[4:], payload)
	return f
}
