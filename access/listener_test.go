package access_test

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"portcullis/access"
	"portcullis/access/accesstest"
	"portcullis/internal/testlog"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serve starts an MTLS listener admitting "edge1.internal" that echoes one
// line back on each accepted connection.
func serve(t *testing.T, p *accesstest.PKI) (*access.Listener, *testlog.Buffer, *sync.Map) {
	t.Helper()
	logs := &testlog.Buffer{}
	refused := &sync.Map{}
	server := accesstest.Material(t, p.Node(t, "core1.internal"))
	ln, err := access.Listen("tcp", "127.0.0.1:0", access.ListenerConfig{
		Material:         server,
		Allow:            access.NewAllowList([]string{"edge1.internal"}),
		HandshakeTimeout: 2 * time.Second,
		Log:              slog.New(slog.NewJSONHandler(logs, nil)),
		OnRefused:        func(r string) { refused.Store(r, true) },
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln, logs, refused
}

func dial(t *testing.T, addr string, cfg *tls.Config) error {
	t.Helper()
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	// With TLS 1.3 the client finishes before the server has checked its
	// certificate: the refusal shows on the first read.
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return err
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "ping\n" {
		return errors.New("bad echo")
	}
	return nil
}

func TestMTLSAcceptsTrustedEdgeAndRecordsIdentity(t *testing.T) {
	p := accesstest.New(t)
	ln, _, _ := serve(t, p)
	edge := accesstest.Material(t, p.Node(t, "edge1.internal"))
	c, err := tls.Dial("tcp", ln.Addr().String(), access.ClientConfig(edge, "core1.internal"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("hi\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 3)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	id, ok := ln.Peer(c.LocalAddr().String())
	if !ok || id.Name != "edge1.internal" || id.Certificate == nil {
		t.Fatalf("identity %+v %v", id, ok)
	}
	c.Close()
	deadline := time.Now().Add(2 * time.Second)
	for ln.PeerCount() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if ln.PeerCount() != 0 {
		t.Fatal("identity kept after the connection closed")
	}
}

func TestMTLSRefusals(t *testing.T) {
	p := accesstest.New(t)
	ln, logs, refused := serve(t, p)
	addr := ln.Addr().String()

	foreign := accesstest.New(t)
	foreignEdge := accesstest.Material(t, foreign.Node(t, "edge1.internal"))
	expired := accesstest.Material(t, p.Issue(t, access.IssueRequest{
		Name: "expired-edge", SANs: []string{"edge1.internal"}, Usage: access.UsageClient,
		NotBefore: time.Now().Add(-48 * time.Hour), Validity: 24 * time.Hour,
	}))
	unlisted := accesstest.Material(t, p.Node(t, "rogue.internal"))
	good := accesstest.Material(t, p.Node(t, "edge1.internal"))
	roots := accesstest.Material(t, p.Node(t, "probe")).Roots

	cases := []struct {
		name   string
		cfg    *tls.Config
		reason string
	}{
		{"foreign CA", &tls.Config{Certificates: []tls.Certificate{foreignEdge.Cert}, RootCAs: roots, ServerName: "core1.internal"}, access.ReasonUnknownCA},
		{"expired", &tls.Config{Certificates: []tls.Certificate{expired.Cert}, RootCAs: roots, ServerName: "core1.internal"}, access.ReasonExpired},
		{"unlisted name", &tls.Config{Certificates: []tls.Certificate{unlisted.Cert}, RootCAs: roots, ServerName: "core1.internal"}, access.ReasonNameNotAllowed},
		{"no certificate", &tls.Config{RootCAs: roots, ServerName: "core1.internal"}, access.ReasonNoCertificate},
		{"TLS 1.1", &tls.Config{Certificates: []tls.Certificate{good.Cert}, RootCAs: roots, ServerName: "core1.internal", MaxVersion: tls.VersionTLS11, MinVersion: tls.VersionTLS10}, access.ReasonHandshakeFailed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := dial(t, addr, tc.cfg); err == nil {
				t.Fatal("connection admitted")
			}
			deadline := time.Now().Add(2 * time.Second)
			for {
				if _, ok := refused.Load(tc.reason); ok {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no refusal with reason %s; logs:\n%s", tc.reason, logs.String())
				}
				time.Sleep(10 * time.Millisecond)
			}
			if !strings.Contains(logs.String(), `"reason":"`+tc.reason+`"`) {
				t.Fatalf("no log line naming %s:\n%s", tc.reason, logs.String())
			}
		})
	}
	if strings.Contains(logs.String(), "PRIVATE KEY") {
		t.Fatal("key material in logs")
	}
	if err := dial(t, addr, access.ClientConfig(good, "core1.internal")); err != nil {
		t.Fatalf("trusted edge refused after refusals: %v", err)
	}
}

func TestMTLSHandshakeTimeoutFreesSlowPeers(t *testing.T) {
	p := accesstest.New(t)
	server := accesstest.Material(t, p.Node(t, "core1.internal"))
	refused := make(chan string, 4)
	ln, err := access.Listen("tcp", "127.0.0.1:0", access.ListenerConfig{
		Material: server, Allow: access.NewAllowList([]string{"edge1.internal"}),
		HandshakeTimeout: 200 * time.Millisecond,
		OnRefused:        func(r string) { refused <- r },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// A peer that connects and says nothing must not hold up a good one.
	idle, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
	}()
	good := accesstest.Material(t, p.Node(t, "edge1.internal"))
	c, err := tls.Dial("tcp", ln.Addr().String(), access.ClientConfig(good, "core1.internal"))
	if err != nil {
		t.Fatalf("good peer blocked by idle one: %v", err)
	}
	c.Close()
	select {
	case r := <-refused:
		if r != access.ReasonTimeout {
			t.Fatalf("reason %s", r)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("idle peer never timed out")
	}
}

func TestAllowListReload(t *testing.T) {
	a := access.NewAllowList([]string{"Edge1.Internal"})
	if _, ok := a.Match([]string{"edge1.internal"}); !ok {
		t.Fatal("case-insensitive match failed")
	}
	a.Set([]string{"edge2.internal"})
	if _, ok := a.Match([]string{"edge1.internal"}); ok {
		t.Fatal("old name still allowed after Set")
	}
}

// Refusals anyone who reaches a listener can cause, at any rate (a failed
// handshake, a connection past a cap), are counted every time but logged
// at most 20 a second per kind (bursts of 100): each was a warning line,
// so a flood of junk connections was also a flood of log writes.
func TestRefusalLogLinesBounded(t *testing.T) {
	p := accesstest.New(t)
	ln, logs, _ := serve(t, p)
	var capped atomic.Int32
	capLogs := &testlog.Buffer{}
	cl, err := access.Listen("tcp", "127.0.0.1:0", access.ListenerConfig{
		Material: accesstest.Material(t, p.Node(t, "core2.internal")), Allow: access.NewAllowList([]string{"edge1.internal"}),
		HandshakeTimeout: 5 * time.Second, MaxConnsPerAddr: 1, Log: slog.New(slog.NewJSONHandler(capLogs, nil)),
		OnRefused: func(r string) {
			if r == access.ReasonConnectionCap {
				capped.Add(1)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	hold, err := net.Dial("tcp", cl.Addr().String()) // takes the one place, handshaking
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	const n = 400
	for range n {
		for _, addr := range []string{ln.Addr().String(), cl.Addr().String()} {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = c.Write([]byte("GET / HTTP/1.0\r\n\r\n")) // not TLS: the handshake fails
			c.Close()
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for capped.Load() < n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if capped.Load() < n {
		t.Fatalf("%d connections counted past the cap, want %d", capped.Load(), n)
	}
	time.Sleep(200 * time.Millisecond) // the last handshakes fail
	refused := strings.Count(logs.String(), `"msg":"mtls peer refused"`)
	over := strings.Count(capLogs.String(), `"msg":"connection refused"`)
	if refused > 150 || over > 150 {
		t.Fatalf("%d handshake refusals and %d cap refusals logged for %d of each: the lines are not bounded", refused, over, n)
	}
	if refused == 0 || over == 0 {
		t.Fatalf("no refusal logged (%d, %d)", refused, over)
	}
}
