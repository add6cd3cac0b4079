package cmd_test

import (
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"portcullis/access"
	"portcullis/internal/testlog"
	"portcullis/internal/turntest"
)

// Dev mode on the built-in configuration: the real dev ports.
func TestDevModeStartsWritesEndpointsAndRefusesSecondInstance(t *testing.T) {
	data := filepath.Join(t.TempDir(), "dev")
	dev := start(t, "portcullis", "dev", "--data", data)
	ready := dev.waitLog("portcullis dev ready")
	if dev.count("portcullis dev ready") != 1 {
		t.Fatal("ready logged more than once")
	}

	raw, err := os.ReadFile(filepath.Join(data, "endpoints.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ep struct {
		CAFile    string `json:"ca_file"`
		Listeners []struct{ Role, Protocol, Address string }
	}
	if err := json.Unmarshal(raw, &ep); err != nil {
		t.Fatal(err)
	}
	if ep.CAFile != filepath.Join(data, "pki", "ca.crt") || ready["ca_file"] != ep.CAFile {
		t.Fatalf("ca_file %q (log %v)", ep.CAFile, ready["ca_file"])
	}
	if _, err := os.Stat(ep.CAFile); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"core sip-mtls":            "127.0.0.1:25061",
		"core http-metrics-health": "127.0.0.1:29100",
		"core https-api":           "127.0.0.1:20443",
		"core sip-tls-users":       "127.0.0.1:25063",
		"edge sip-mtls-internal":   "127.0.0.1:15062",
		"edge sip-tls-external":    "127.0.0.1:15061",
		"edge http-metrics-health": "127.0.0.1:19100",
		"edge turn-udp":            "127.0.0.1:13478",
		"edge turn-tcp":            "127.0.0.1:13478",
		"edge turn-tls":            "127.0.0.1:10443",
	}
	for _, l := range ep.Listeners {
		key := l.Role + " " + l.Protocol
		if want[key] != l.Address {
			t.Errorf("listener %s at %s, want %s", key, l.Address, want[key])
		}
		delete(want, key)
	}
	if len(want) > 0 {
		t.Errorf("endpoints.json lacks %v", want)
	}
	for _, addr := range []string{"127.0.0.1:19100", "127.0.0.1:29100"} {
		waitHTTP(t, addr, "/healthz", 200)
		waitHTTP(t, addr, "/readyz", 200)
	}
	for _, f := range []string{"pki/ca.key", "pki/core.dev.internal.key", "pki/edge.dev.internal.key"} {
		st, err := os.Stat(filepath.Join(data, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", f, st.Mode(), err)
		}
	}
	if _, err := os.Stat(filepath.Join(data, "core.db")); err != nil {
		t.Fatal("no store:", err)
	}

	turnThroughDev(t, data)
	imThroughDev(t, data)

	// A second instance on the same folder is refused before touching it.
	code, _, errOut := run(t, "portcullis", "dev", "--data", data)
	if code != 1 || !strings.Contains(errOut, "data folder is in use by another portcullis dev") {
		t.Fatalf("second dev: exit %d\n%s", code, errOut)
	}
	waitHTTP(t, "127.0.0.1:29100", "/readyz", 200)

	dev.signal(syscall.SIGINT)
	if code := dev.wait(); code != 0 {
		t.Fatalf("dev exit %d:\n%s", code, dev.output())
	}
	if _, err := os.Stat(filepath.Join(data, "endpoints.json")); !os.IsNotExist(err) {
		t.Fatalf("endpoints.json left behind: %v", err)
	}

	// A restart reuses the PKI and the store.
	dev2 := start(t, "portcullis", "dev", "--data", data)
	dev2.waitLog("portcullis dev ready")
	if dev2.count("created dev CA") != 0 {
		t.Fatal("CA recreated on restart")
	}
	dev2.signal(syscall.SIGTERM)
	if code := dev2.wait(); code != 0 {
		t.Fatalf("dev restart exit %d", code)
	}
}

func TestCLIUsageErrors(t *testing.T) {
	for _, args := range [][]string{{}, {"frobnicate"}, {"pki"}, {"pki", "issue", "--dir", t.TempDir()}} {
		if code, _, errOut := run(t, "portcullis", args...); code != 2 || errOut == "" {
			t.Errorf("portcullis %v: exit %d, stderr %q", args, code, errOut)
		}
	}
	code, _, errOut := run(t, "portcullis", "pki", "issue", "--dir", t.TempDir(), "--name", "x")
	if code != 1 || !strings.Contains(errOut, "portcullis pki init --dir") {
		t.Errorf("issue without CA: exit %d %q", code, errOut)
	}
}

// turnThroughDev takes a credential from the core's HTTPS endpoint (with an
// operator's certificate from the dev CA; the edge's own is refused) and
// relays a round trip through the edge's TURN relay with it, and a
// coturn-style credential from `portcullis turn-cred --data`.
func turnThroughDev(t *testing.T, data string) {
	t.Helper()
	if code, _, errOut := run(t, "portcullis", "pki", "issue", "--dir", filepath.Join(data, "pki"), "--name", "ops.dev.internal", "--san", "ops.dev.internal", "--client"); code != 0 {
		t.Fatalf("pki issue: %d %s", code, errOut)
	}
	post := func(name string) *http.Response {
		t.Helper()
		m, err := access.LoadMaterial(access.TLSFiles{CAFile: filepath.Join(data, "pki/ca.crt"),
			CertFile: filepath.Join(data, "pki/"+name+".crt"), KeyFile: filepath.Join(data, "pki/"+name+".key")})
		if err != nil {
			t.Fatal(err)
		}
		hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: access.ClientConfig(m, "core.dev.internal")}}
		res, err := hc.Post("https://127.0.0.1:20443/v1/turn-credentials", "application/json", strings.NewReader(`{"user":"sip:alice@example.test"}`))
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if res := post("edge.dev.internal"); res.StatusCode != http.StatusForbidden {
		t.Fatalf("credential endpoint with the edge's certificate: %d, want 403", res.StatusCode)
	} else {
		res.Body.Close()
	}
	res := post("ops.dev.internal")
	var cred struct{ Username, Password string }
	if err := json.NewDecoder(res.Body).Decode(&cred); err != nil || res.StatusCode != 200 {
		t.Fatalf("credential endpoint: %d %v", res.StatusCode, err)
	}
	res.Body.Close()
	relayRoundTrip(t, cred.Username, cred.Password)

	code, out, errOut := run(t, "portcullis", "turn-cred", "--data", data, "--user", "bob", "--ttl", "1h")
	if code != 0 {
		t.Fatalf("turn-cred: %d %s", code, errOut)
	}
	var user, pass string
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "username "); ok {
			user = v
		}
		if v, ok := strings.CutPrefix(line, "password "); ok {
			pass = v
		}
	}
	relayRoundTrip(t, user, pass)
}

func relayRoundTrip(t *testing.T, user, pass string) {
	t.Helper()
	peer, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	go func() {
		buf := make([]byte, 1500)
		n, from, err := peer.ReadFrom(buf)
		if err == nil {
			_, _ = peer.WriteTo(buf[:n], from)
		}
	}()
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cl := turntest.Client(t, "127.0.0.1:13478", conn, user, pass, "example.test")
	rc, err := cl.Allocate()
	if err != nil {
		t.Fatalf("allocate with %s: %v", user, err)
	}
	defer rc.Close()
	if _, err := rc.WriteTo([]byte("ping"), peer.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_ = rc.SetReadDeadline(time.Now().Add(3 * time.Second))
	if n, _, err := rc.ReadFrom(buf); err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("relay round trip: %q %v", buf[:n], err)
	}
}

// imThroughDev is the README tour: bob listens inside, alice sends an IM
// from outside through the edge, with the dev users' passwords.
func imThroughDev(t *testing.T, data string) {
	t.Helper()
	users, err := os.ReadFile(filepath.Join(data, "dev-users.txt"))
	if err != nil || strings.Count(string(users), "@example.test ") != 3 {
		t.Fatalf("dev-users.txt: %q %v", users, err)
	}
	if st, _ := os.Stat(filepath.Join(data, "dev-users.txt")); st.Mode().Perm() != 0o600 {
		t.Fatalf("dev-users.txt mode %v", st.Mode())
	}
	listen := exec.Command(filepath.Join(bin, "portcullis"), "client", "listen", "--data", data, "--internal", "--user", "sip:bob@example.test")
	var out testlog.Buffer
	listen.Stdout = &out
	if err := listen.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = listen.Process.Signal(syscall.SIGTERM); _ = listen.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "listening as") {
		if time.Now().After(deadline) {
			t.Fatalf("listener never started: %q", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // its REGISTER
	code, stdout, errOut := run(t, "portcullis", "client", "im", "--data", data, "--user", "sip:alice@example.test", "--to", "sip:bob@example.test", "hello from outside")
	if code != 0 || !strings.Contains(stdout, "200 OK") {
		t.Fatalf("client im: %d %s %s", code, stdout, errOut)
	}
	for !strings.Contains(out.String(), "sip:alice@example.test: hello from outside") {
		if time.Now().After(deadline) {
			t.Fatalf("bob never printed the IM: %q", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
