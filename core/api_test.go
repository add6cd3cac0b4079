package core_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"portcullis/access"
	"portcullis/access/accesstest"
	"portcullis/core"
	"portcullis/internal/lifecycle"
	"portcullis/internal/ops"
	"portcullis/internal/testlog"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func startCore(t *testing.T, tune ...func(*core.Config)) (*core.Server, *accesstest.PKI, []byte) {
	t.Helper()
	pki := accesstest.New(t)
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "turn.secret")
	if err := access.NewTURNSecret(secretFile); err != nil {
		t.Fatal(err)
	}
	c := core.DefaultConfig()
	c.Metrics.Listen, c.SIP.Listen, c.HTTPS.Listen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	c.SIP.Hostname = "core1.internal"
	c.TLS = pki.Node(t, "core1.internal")
	c.TrustedEdges = []string{"edge1.internal"}
	c.Store.Path = filepath.Join(dir, "core.db")
	c.TURN.SecretFile = secretFile
	c.TURN.URIs = []string{"turn:127.0.0.1:3478?transport=udp"}
	c.SIP.UsersListen = "127.0.0.1:0"
	c.Registrar.Domains = []core.DomainConfig{{Domain: "example.test", Algorithms: []string{"SHA-256", "MD5"}}}
	c.Registrar.MinExpires = 2 * time.Second
	for _, f := range tune {
		f(&c)
	}
	s, err := core.Start(context.Background(), c, depsFor(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	secret, _ := access.LoadTURNSecret(secretFile)
	return s, pki, secret
}

func depsFor(t *testing.T) lifecycle.Deps {
	return lifecycle.Deps{Log: slog.New(slog.NewTextHandler(testlog.Writer(t, ""), &slog.HandlerOptions{Level: slog.LevelDebug})), Registry: ops.NewRegistry()}
}

func client(m *access.Material, roots *x509.CertPool) *http.Client {
	conf := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots, ServerName: "core1.internal"}
	if m != nil {
		conf.Certificates = []tls.Certificate{m.Cert}
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: conf, DisableKeepAlives: true}}
}

func TestTURNCredentialEndpoint(t *testing.T) {
	s, pki, secret := startCore(t)
	url := "https://" + s.HTTPSAddr() + "/v1/turn-credentials"
	ops := accesstest.Material(t, pki.Node(t, "ops.internal"))
	cl := client(ops, ops.Roots)

	// An edge's certificate, from the same CA, is refused (403) on every
	// path: an edge never needs the API.
	edge := accesstest.Material(t, pki.Node(t, "edge1.internal"))
	for _, path := range []string{"/v1/turn-credentials", "/v1/meetings", "/v1/c3p"} {
		res, err := client(edge, edge.Roots).Post("https://"+s.HTTPSAddr()+path, "application/json", strings.NewReader(`{"user":"sip:alice@example.test"}`))
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusForbidden {
			t.Fatalf("%s with the edge's certificate: %d, want 403", path, res.StatusCode)
		}
	}

	res, err := cl.Post(url, "application/json", strings.NewReader(`{"user":"sip:alice@example.test","ttl":"1h"}`))
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Username, Password string
		TTL                int64
		URIs               []string
	}
	if err := json.NewDecoder(res.Body).Decode(&got); err != nil || res.StatusCode != 200 {
		t.Fatalf("%d %v", res.StatusCode, err)
	}
	res.Body.Close()
	user, err := access.ParseTURNUsername(got.Username, time.Now())
	if err != nil || user != "sip:alice@example.test" || got.TTL != 3600 || got.Password != access.TURNPassword(secret, got.Username) || len(got.URIs) != 1 {
		t.Fatalf("credential %+v (user %q, %v)", got, user, err)
	}

	// A longer TTL than allowed is capped at max_ttl (24h).
	res, _ = cl.Post(url, "application/json", strings.NewReader(`{"user":"bob","ttl":"1000h"}`))
	_ = json.NewDecoder(res.Body).Decode(&got)
	res.Body.Close()
	if got.TTL != 24*3600 {
		t.Fatalf("ttl %d, want capped at 86400", got.TTL)
	}

	for _, tc := range []struct {
		method, body string
		want         int
	}{
		{"GET", "", 405},
		{"POST", `{"user":""}`, 400},
		{"POST", `{"user":"x","ttl":"-1h"}`, 400},
		{"POST", `{"user":"x","extra":1}`, 400},
		{"POST", `not json`, 400},
		{"POST", `{"user":"` + strings.Repeat("a", 8000) + `"}`, 413},
	} {
		req, _ := http.NewRequest(tc.method, url, bytes.NewBufferString(tc.body))
		res, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != tc.want {
			t.Errorf("%s %q: %d %s, want %d", tc.method, tc.body, res.StatusCode, b, tc.want)
		}
	}

	// No client certificate, or one from another CA: no TLS session at all.
	if _, err := client(nil, edge.Roots).Post(url, "application/json", strings.NewReader(`{"user":"x"}`)); err == nil {
		t.Fatal("answered without a client certificate")
	}
	foreign := accesstest.Material(t, accesstest.New(t).Node(t, "edge1.internal"))
	if _, err := client(foreign, edge.Roots).Post(url, "application/json", strings.NewReader(`{"user":"x"}`)); err == nil {
		t.Fatal("answered a foreign CA's certificate")
	}
}

// A reload reads the TURN secret file again: credentials issued from then
// on are under the new secret. An unreadable file rejects the reload.
func TestReloadRotatesTURNSecret(t *testing.T) {
	s, pki, _ := startCore(t)
	url := "https://" + s.HTTPSAddr() + "/v1/turn-credentials"
	ops := accesstest.Material(t, pki.Node(t, "ops.internal"))
	cl := client(ops, ops.Roots)
	issue := func() (username, password string) {
		t.Helper()
		res, err := cl.Post(url, "application/json", strings.NewReader(`{"user":"alice"}`))
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var got struct{ Username, Password string }
		if err := json.NewDecoder(res.Body).Decode(&got); err != nil || res.StatusCode != 200 {
			t.Fatalf("%d %v", res.StatusCode, err)
		}
		return got.Username, got.Password
	}
	cfg := s.Config()
	cfg.TURN.SecretFile = filepath.Join(t.TempDir(), "turn.secret")
	if err := access.NewTURNSecret(cfg.TURN.SecretFile); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	fresh, _ := access.LoadTURNSecret(cfg.TURN.SecretFile)
	if u, p := issue(); p != access.TURNPassword(fresh, u) {
		t.Fatal("credential not issued under the secret the reload read")
	}
	broken := cfg
	broken.TURN.SecretFile = filepath.Join(t.TempDir(), "missing")
	if err := s.Reload(broken); err == nil {
		t.Fatal("reload with a missing secret file accepted")
	}
	if u, p := issue(); p != access.TURNPassword(fresh, u) {
		t.Fatal("a rejected reload changed the secret")
	}
}

func accesstestRoots(t *testing.T, p *accesstest.PKI) *x509.CertPool {
	return accesstest.Material(t, p.Node(t, "client-"+strings.ReplaceAll(t.Name(), "/", "-"))).Roots
}
