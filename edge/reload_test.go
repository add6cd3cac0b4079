package edge_test

import (
	"crypto/tls"
	"net"
	"path/filepath"
	"testing"
	"time"

	"portcullis/access"
	"portcullis/edge"
	"portcullis/internal/turntest"
)

// An edge reload rotates the relay's secret in place (the relay keeps
// running; credentials under the new secret work, those under the old one
// still do) and keeps what only a restart changes (the realm).
func TestEdgeReloadRotatesTURNSecret(t *testing.T) {
	e := newEnv(t)
	c := edge.DefaultConfig()
	c.Metrics.Listen = "127.0.0.1:0"
	c.Internal.Listen = "127.0.0.1:0"
	c.Internal.Hostname = "edge1.internal"
	c.Internal.TrustedCores = []string{"core1.internal"}
	c.TLS = e.nodeFiles("edge1.internal")
	c.Core = edge.LinkConfig{Address: "127.0.0.1:9", ServerName: "core1.internal", KeepaliveInterval: time.Second,
		KeepaliveTimeout: time.Second, ReconnectMin: 100 * time.Millisecond, ReconnectMax: time.Second}
	c.TURN.Enabled = true
	c.TURN.Realm = "example.test"
	c.TURN.SecretFile = e.secret
	c.TURN.ListenUDP = []string{"127.0.0.1:0"}
	c.TURN.Relay.BindIPv4, c.TURN.Relay.PortMin, c.TURN.Relay.PortMax = "127.0.0.1", 50000, 59999
	c.TURN.AllowedPeers = []string{"127.0.0.1/32"}
	s, err := edge.Start(c, deps(t, "edge"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	udp := s.Relay().Listeners()[0].Address
	allocate := func(secret []byte, user string) error {
		conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		cred := access.IssueTURN(secret, user, time.Hour, time.Now())
		rc, err := turntest.Client(t, udp, conn, cred.Username, cred.Password, "example.test").Allocate()
		if err == nil {
			rc.Close()
		}
		return err
	}
	old, err := access.LoadTURNSecret(e.secret)
	if err != nil {
		t.Fatal(err)
	}
	if err := allocate(old, "alice"); err != nil {
		t.Fatal(err)
	}

	rotated := c
	rotated.TURN.SecretFile = filepath.Join(t.TempDir(), "turn.secret")
	if err := access.NewTURNSecret(rotated.TURN.SecretFile); err != nil {
		t.Fatal(err)
	}
	rotated.TURN.Realm = "other.test" // restart-only: kept
	if err := s.Reload(rotated); err != nil {
		t.Fatal(err)
	}
	fresh, err := access.LoadTURNSecret(rotated.TURN.SecretFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := allocate(fresh, "bob"); err != nil {
		t.Fatalf("new secret after reload: %v", err)
	}
	if err := allocate(old, "carol"); err != nil {
		t.Fatalf("previous secret after reload: %v", err)
	}
	if got := s.Relay().Listeners()[0].Address; got != udp {
		t.Fatalf("relay listener moved from %s to %s", udp, got)
	}
}

// A reload reads the public key pair again: new connections from outside
// get the renewed certificate, connections open go on, and a key pair that
// cannot be read rejects the reload.
func TestEdgeReloadRenewsPublicCertificate(t *testing.T) {
	e := newEnv(t)
	_, ed := e.startAccess()
	roots := accessRoots(t, e)
	served := func() string {
		t.Helper()
		c, err := tls.Dial("tcp", ed.ExternalAddr(), &tls.Config{RootCAs: roots, ServerName: "sip.example.test", MinVersion: tls.VersionTLS12})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	open, err := tls.Dial("tcp", ed.ExternalAddr(), &tls.Config{RootCAs: roots, ServerName: "sip.example.test", MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	first := served()
	renewed := e.pki.Issue(t, access.IssueRequest{Name: "sip-renewed.example.test", SANs: []string{"sip.example.test", "127.0.0.1"}, Usage: access.UsageServer})
	cfg := ed.Config()
	cfg.External.TLSCertFile, cfg.External.TLSKeyFile = renewed.CertFile, renewed.KeyFile
	if err := ed.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	second := served()
	if second == first {
		t.Fatal("the external listener still serves the certificate from before the reload")
	}
	if _, err := open.Write([]byte("\r\n\r\n")); err != nil { // a keep-alive on the connection from before
		t.Fatalf("connection from before the reload: %v", err)
	}
	broken := cfg
	broken.External.TLSKeyFile = filepath.Join(t.TempDir(), "missing.key")
	if err := ed.Reload(broken); err == nil {
		t.Fatal("reload with a missing key file accepted")
	}
	if got := served(); got != second {
		t.Fatal("a rejected reload changed the certificate")
	}
}
