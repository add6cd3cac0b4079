package relay_test

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v4"

	"portcullis/access"
	"portcullis/access/accesstest"
)

// A reload changes the secret, the peer policy and the quotas while
// allocations go on: credentials issued under the secret before the change
// keep working (calls in progress keep their media) until the next change;
// permissions and channels toward a peer the new policy denies stop at
// once; the new quota holds for the next Allocate.
func TestReloadRotatesSecretAndAppliesPolicy(t *testing.T) {
	cfg := testConfig(t)
	cfg.Relay.BindIPv6 = ""
	cfg.AllowedPeers = []string{"127.0.0.1/32", "127.0.0.3/32"}
	e := start(t, cfg)
	near := newEchoPeer(t, "127.0.0.1:0")
	far := newEchoPeer(t, "127.0.0.3:0")

	old := e.secret
	a := dialClient(t, "udp", e.udp, access.IssueTURN(old, "alice", time.Hour, time.Now()))
	res := a.request(stun.MethodAllocate, udpTransport)
	mustOK(t, "Allocate", res)
	relay := relayedAddr(t, res)
	mustOK(t, "ChannelBind near", a.request(stun.MethodChannelBind, channelAttr(0x4001), peerAttr(near.addr())))
	mustOK(t, "ChannelBind far", a.request(stun.MethodChannelBind, channelAttr(0x4002), peerAttr(far.addr())))
	roundTrip(t, a, 0x4002, "before")

	rotated := cfg
	rotated.SecretFile = newSecretFile(t)
	rotated.AllowedPeers = []string{"127.0.0.1/32"} // 127.0.0.3 falls back to the default: denied
	rotated.Quota.PerUser = 1
	rotated.Relay.PortMin = 1024 // restart-only: reported, not applied
	if keys := e.srv.RestartOnly(rotated); len(keys) != 1 || keys[0] != "turn.relay" {
		t.Fatalf("restart-only keys %v, want [turn.relay]", keys)
	}
	if err := e.srv.Reload(rotated); err != nil {
		t.Fatal(err)
	}
	fresh, err := access.LoadTURNSecret(rotated.SecretFile)
	if err != nil {
		t.Fatal(err)
	}

	// The old credential still authenticates (front filter and pion).
	mustOK(t, "Refresh with the old secret's credential", a.request(stun.MethodRefresh, lifetimeAttr(600)))
	roundTrip(t, a, 0x4001, "near, after")
	// The far peer is denied now: nothing goes to it or comes from it.
	before := far.got.Load()
	if _, err := a.conn.Write(channelFrame(0x4002, []byte("after"))); err != nil {
		t.Fatal(err)
	}
	if _, err := far.conn.WriteToUDPAddrPort([]byte("from far"), relay); err != nil {
		t.Fatal(err)
	}
	if got := a.readRaw(500 * time.Millisecond); got != nil {
		t.Fatalf("a peer the new policy denies reached the client: %q", got)
	}
	if n := far.got.Load() - before; n != 0 {
		t.Fatalf("%d packets reached a peer the new policy denies", n)
	}
	if got := code(a.request(stun.MethodCreatePermission, peerAttr(far.addr()))); got != stun.CodeForbidden {
		t.Fatalf("CreatePermission toward a newly denied peer: %d, want 403", got)
	}
	// The new quota: alice has one allocation already.
	if got := code(dialClient(t, "udp", e.udp, access.IssueTURN(fresh, "alice", time.Hour, time.Now())).request(stun.MethodAllocate, udpTransport)); got != stun.CodeAllocQuotaReached {
		t.Fatalf("second allocation under a per-user quota of 1: %d, want 486\n%s", got, e.logs.String())
	}
	// The new secret's credentials work, over pion's own checks too.
	b := dialClient(t, "udp", e.udp, access.IssueTURN(fresh, "bob", time.Hour, time.Now()))
	mustOK(t, "Allocate with the new secret", b.request(stun.MethodAllocate, udpTransport))
	mustOK(t, "ChannelBind with the new secret", b.request(stun.MethodChannelBind, channelAttr(0x4001), peerAttr(near.addr())))
	roundTrip(t, b, 0x4001, "new secret")

	// A second change retires the first secret.
	again := rotated
	again.SecretFile = newSecretFile(t)
	if err := e.srv.Reload(again); err != nil {
		t.Fatal(err)
	}
	c := dialClient(t, "udp", e.udp, access.IssueTURN(old, "carol", time.Hour, time.Now()))
	if got := code(c.request(stun.MethodAllocate, udpTransport)); got != stun.CodeUnauthorized {
		t.Fatalf("a credential two secrets old: %d, want 401", got)
	}
	mustOK(t, "Refresh with the previous secret's credential", b.request(stun.MethodRefresh, lifetimeAttr(600)))

	// A reload that cannot be applied changes nothing.
	broken := again
	broken.SecretFile = filepath.Join(t.TempDir(), "missing")
	if err := e.srv.Reload(broken); err == nil {
		t.Fatal("reload with a missing secret file accepted")
	}
	mustOK(t, "Refresh after a rejected reload", b.request(stun.MethodRefresh, lifetimeAttr(600)))
}

func newSecretFile(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "turn.secret")
	if err := access.NewTURNSecret(f); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(f); err != nil {
		t.Fatal(err)
	}
	return f
}

// roundTrip sends ChannelData on number and waits for the echo.
func roundTrip(t *testing.T, c *client, number uint16, payload string) {
	t.Helper()
	if _, err := c.conn.Write(channelFrame(number, []byte(payload))); err != nil {
		t.Fatal(err)
	}
	back := c.readRaw(2 * time.Second)
	if len(back) < 4+len(payload) || string(back[4:4+len(payload)]) != payload {
		t.Fatalf("round trip on channel %#x: got %q", number, back)
	}
}

// A TCP relay's connection with a peer that a reload's policy denies is
// closed at once.
func TestReloadClosesTCPRelaysToDeniedPeers(t *testing.T) {
	cfg := testConfig(t)
	cfg.Relay.BindIPv6 = ""
	cfg.AllowedPeers = []string{"127.0.0.1/32", "127.0.0.3/32"}
	e := start(t, cfg)
	ln, err := net.Listen("tcp", "127.0.0.3:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	closed := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			closed <- err
			return
		}
		defer c.Close()
		_, err = io.ReadAll(c) // returns when the relay closes its side
		closed <- err
	}()
	conn, _, _ := tcpRelay(t, e, e.cred("yusuf"), ln.Addr())
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-closed:
		t.Fatalf("peer connection ended before the reload: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	denied := cfg
	denied.AllowedPeers = []string{"127.0.0.1/32"}
	if err := e.srv.Reload(denied); err != nil {
		t.Fatal(err)
	}
	select {
	case <-closed:
	case <-time.After(3 * time.Second):
		t.Fatal("the connection with a peer the new policy denies is still open")
	}
}

// A reload reads the TURN-over-TLS key pair again (a renewed certificate):
// new handshakes get it, connections open go on.
func TestReloadRenewsTLSCertificate(t *testing.T) {
	cfg := testConfig(t)
	e := start(t, cfg)
	before, err := tlsDial(e.tls)
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	renewed := cfg
	files := accesstest.New(t).Node(t, "renewed.example.test")
	renewed.TLSCertFile, renewed.TLSKeyFile = files.CertFile, files.KeyFile
	if keys := e.srv.RestartOnly(renewed); len(keys) != 0 {
		t.Fatalf("restart-only keys %v for new certificate files", keys)
	}
	if err := e.srv.Reload(renewed); err != nil {
		t.Fatal(err)
	}
	served := func() string { // the certificate a new handshake gets
		t.Helper()
		c, err := tlsDial(e.tls)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	if got := served(); got != "renewed.example.test" {
		t.Fatalf("certificate after reload: %q", got)
	}
	c := &client{t: t, conn: before, stream: newReader(before)}
	c.send(stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint))
	if res := c.read(2 * time.Second); res == nil || res.Type != stun.BindingSuccess {
		t.Fatalf("connection from before the reload: %v", res)
	}
	broken := renewed
	broken.TLSKeyFile = filepath.Join(t.TempDir(), "missing.key")
	if err := e.srv.Reload(broken); err == nil {
		t.Fatal("reload with a missing key file accepted")
	}
	if got := served(); got != "renewed.example.test" {
		t.Fatalf("certificate after a rejected reload: %q", got)
	}
}

// After a change of the secret, credentials issued under the one before
// are honoured for turn.previous_secret_grace, then refused with 401, also
// for an allocation made with one; with no grace they stop at once.
func TestReloadRetiresPreviousSecretAfterGrace(t *testing.T) {
	cfg := testConfig(t)
	cfg.Relay.BindIPv6 = ""
	e := start(t, cfg)
	old := e.secret
	a := dialClient(t, "udp", e.udp, access.IssueTURN(old, "alice", time.Hour, time.Now()))
	mustOK(t, "Allocate", a.request(stun.MethodAllocate, udpTransport))

	const grace = 1500 * time.Millisecond
	rotated := cfg
	rotated.SecretFile = newSecretFile(t)
	rotated.PreviousSecretGrace = grace
	if keys := e.srv.RestartOnly(rotated); len(keys) != 0 {
		t.Fatalf("restart-only keys %v for a new secret and grace", keys)
	}
	if err := e.srv.Reload(rotated); err != nil {
		t.Fatal(err)
	}
	changed := time.Now() // not before the change: the grace ends by changed+grace
	mustOK(t, "Refresh with the old secret's credential within the grace", a.request(stun.MethodRefresh, lifetimeAttr(600)))
	if !strings.Contains(e.logs.String(), `"previous_secret_until"`) {
		t.Fatalf("the reload's log line does not say until when the old secret works:\n%s", e.logs.String())
	}
	time.Sleep(time.Until(changed.Add(grace + 50*time.Millisecond)))
	if got := code(a.request(stun.MethodRefresh, lifetimeAttr(600))); got != stun.CodeUnauthorized {
		t.Fatalf("Refresh with the old secret's credential after the grace: %d, want 401", got)
	}
	b := dialClient(t, "udp", e.udp, access.IssueTURN(old, "bob", time.Hour, time.Now()))
	if got := code(b.request(stun.MethodAllocate, udpTransport)); got != stun.CodeUnauthorized {
		t.Fatalf("Allocate with the old secret's credential after the grace: %d, want 401", got)
	}

	// No grace: the credentials of the secret before stop with the change.
	fresh, err := access.LoadTURNSecret(rotated.SecretFile)
	if err != nil {
		t.Fatal(err)
	}
	c := dialClient(t, "udp", e.udp, access.IssueTURN(fresh, "carol", time.Hour, time.Now()))
	mustOK(t, "Allocate with the current secret", c.request(stun.MethodAllocate, udpTransport))
	none := rotated
	none.SecretFile = newSecretFile(t)
	none.PreviousSecretGrace = 0
	if err := e.srv.Reload(none); err != nil {
		t.Fatal(err)
	}
	if got := code(c.request(stun.MethodRefresh, lifetimeAttr(600))); got != stun.CodeUnauthorized {
		t.Fatalf("Refresh with the replaced secret's credential and no grace: %d, want 401", got)
	}
}
