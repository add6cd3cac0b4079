package edge_test

import (
	"bufio"
	"context"
	"crypto/tls"
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
	"portcullis/core/store"
	"portcullis/edge"
	"portcullis/internal/lifecycle"
	"portcullis/internal/ops"
	"portcullis/internal/testlog"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type env struct {
	t      *testing.T
	pki    *accesstest.PKI
	store  string
	secret string
}

func newEnv(t *testing.T) *env {
	dir := t.TempDir()
	secret := filepath.Join(dir, "turn.secret")
	if err := access.NewTURNSecret(secret); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, pki: accesstest.New(t), store: filepath.Join(dir, "core.db"), secret: secret}
}

func deps(t *testing.T, name string) lifecycle.Deps {
	return lifecycle.Deps{
		Log:      slog.New(slog.NewJSONHandler(testlog.Writer(t, name), &slog.HandlerOptions{Level: slog.LevelDebug})),
		Level:    new(slog.LevelVar),
		Registry: ops.NewRegistry(),
	}
}

func (e *env) coreConfig(listen string, trusted ...string) core.Config {
	c := core.DefaultConfig()
	c.Metrics.Listen = "127.0.0.1:0"
	c.SIP.Listen = listen
	c.SIP.Hostname = "core1.internal"
	c.TLS = e.nodeFiles("core1.internal")
	c.TrustedEdges = trusted
	c.Store = store.Config{Driver: "sqlite", Path: e.store}
	c.HTTPS.Listen = "127.0.0.1:0"
	c.TURN.SecretFile = e.secret
	c.Registrar.Domains = []core.DomainConfig{{Domain: "example.test", Algorithms: []string{"SHA-256", "MD5"}}}
	return c
}

func (e *env) nodeFiles(name string) access.TLSFiles {
	f := access.TLSFiles{CAFile: e.pki.CAFile(), CertFile: access.CertPath(e.pki.Dir, name), KeyFile: access.KeyPath(e.pki.Dir, name)}
	if _, err := access.LoadMaterial(f); err != nil {
		return e.pki.Node(e.t, name)
	}
	return f
}

func (e *env) startCore(cfg core.Config) *core.Server {
	e.t.Helper()
	s, err := core.Start(context.Background(), cfg, deps(e.t, "core"))
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

func (e *env) startEdge(coreAddr, name string) *edge.Server {
	e.t.Helper()
	c := edge.DefaultConfig()
	c.Metrics.Listen = "127.0.0.1:0"
	c.Internal.Listen = "127.0.0.1:0"
	c.Internal.Hostname = name
	c.Internal.TrustedCores = []string{"core1.internal"}
	c.TLS = e.nodeFiles(name)
	c.Core = edge.LinkConfig{Address: coreAddr, ServerName: "core1.internal",
		KeepaliveInterval: 100 * time.Millisecond, KeepaliveTimeout: 500 * time.Millisecond,
		ReconnectMin: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond}
	s, err := edge.Start(c, deps(e.t, "edge"))
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// readyz fetches /readyz from an ops listener.
func readyz(t *testing.T, addr string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	res, err := client.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func waitReadyz(t *testing.T, addr string, want int) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := readyz(t, addr)
		if code == want {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz on %s: %d %q, want %d", addr, code, body, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func metric(t *testing.T, addr, name string) string {
	t.Helper()
	res, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), name+" ") {
			return strings.TrimPrefix(sc.Text(), name+" ")
		}
	}
	return ""
}

// startLinked starts a core trusting edge1.internal and that edge, and
// returns both with the core's SIP address and both ops addresses.
func (e *env) startLinked() (c *core.Server, ed *edge.Server, coreAddr, coreOps, edgeOps string) {
	c = e.startCore(e.coreConfig("127.0.0.1:0", "edge1.internal"))
	coreAddr, coreOps = c.Addr()
	ed = e.startEdge(coreAddr, "edge1.internal")
	_, edgeOps = ed.Addr()
	return c, ed, coreAddr, coreOps, edgeOps
}

// waitMetric waits until series has a value that ok accepts.
func waitMetric(t *testing.T, addr, series string, ok func(string) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok(metric(t, addr, series)) {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %q", series, metric(t, addr, series))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func equals(want string) func(string) bool { return func(v string) bool { return v == want } }
func present(v string) bool                { return v != "" }

func TestLinkUpSurvivesCoreRestartAndReportsReadiness(t *testing.T) {
	e := newEnv(t)
	c, ed, coreAddr, coreOps, edgeOps := e.startLinked()
	defer ed.Close()

	waitReadyz(t, edgeOps, 200)
	waitReadyz(t, coreOps, 200)
	if got := metric(t, edgeOps, "portcullis_edge_core_link_up"); got != "1" {
		t.Fatalf("link_up = %q", got)
	}
	if got := metric(t, coreOps, "portcullis_core_edge_links"); got != "1" {
		t.Fatalf("core sees %q edge links", got)
	}

	// The core goes away: the edge reports not ready and says why.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	body := waitReadyz(t, edgeOps, 503)
	if !strings.Contains(body, "link to core is down") {
		t.Fatalf("readyz body %q", body)
	}
	if got := metric(t, edgeOps, "portcullis_edge_core_link_up"); got != "0" {
		t.Fatalf("link_up = %q while core is down", got)
	}

	// The core comes back on the same address: the edge reconnects by itself.
	c2 := e.startCore(e.coreConfig(coreAddr, "edge1.internal"))
	defer c2.Close()
	waitReadyz(t, edgeOps, 200)
	_, core2Ops := c2.Addr()
	if got := metric(t, core2Ops, "portcullis_core_edge_links"); got != "1" {
		t.Fatalf("restarted core sees %q edge links", got)
	}
	if got := metric(t, edgeOps, "portcullis_edge_core_link_down_total"); got != "1" {
		t.Fatalf("link_down_total = %q", got)
	}
}

func TestCoreRefusesUntrustedEdge(t *testing.T) {
	e := newEnv(t)
	c := e.startCore(e.coreConfig("127.0.0.1:0", "edge1.internal"))
	defer c.Close()
	coreAddr, coreOps := c.Addr()
	ed := e.startEdge(coreAddr, "rogue.internal")
	defer ed.Close()
	_, edgeOps := ed.Addr()
	waitMetric(t, coreOps, `portcullis_core_mtls_refused_total{reason="name_not_allowed"}`, present)
	if code, _ := readyz(t, edgeOps); code != 503 {
		t.Fatalf("untrusted edge reports ready (%d)", code)
	}
	if got := metric(t, coreOps, "portcullis_core_sip_requests_total{method=\"OPTIONS\"}"); got != "" {
		t.Fatalf("a request from the refused edge reached the core: %s", got)
	}

	// Trusting it by reload lets it in without restarting the core.
	cfg := c.Config()
	cfg.TrustedEdges = []string{"edge1.internal", "rogue.internal"}
	if err := c.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	waitReadyz(t, edgeOps, 200)
}

// RFC 5626 §3.5.1: a double CRLF ping is answered with a CRLF pong and the
// connection stays usable for SIP.
func TestCoreAnswersCRLFKeepalive(t *testing.T) {
	e := newEnv(t)
	c := e.startCore(e.coreConfig("127.0.0.1:0", "edge1.internal"))
	defer c.Close()
	coreAddr, _ := c.Addr()
	m := accesstest.Material(t, e.nodeFiles("edge1.internal"))
	conn, err := tls.Dial("tcp", coreAddr, access.ClientConfig(m, "core1.internal"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	pong := make([]byte, 2)
	if _, err := io.ReadFull(conn, pong); err != nil || string(pong) != "\r\n" {
		t.Fatalf("pong %q %v", pong, err)
	}
	if line := rawOptions(t, conn); !strings.HasPrefix(line, "SIP/2.0 200") {
		t.Fatalf("after keepalive: %q", line)
	}
}

// rawOptions sends a hand-written OPTIONS on conn and returns the status line.
func rawOptions(t *testing.T, conn *tls.Conn) string {
	t.Helper()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	local := conn.LocalAddr().String()
	opts := "OPTIONS sip:peer.internal;transport=tls SIP/2.0\r\n" +
		"Via: SIP/2.0/TLS " + local + ";branch=z9hG4bK-raw-" + strings.ReplaceAll(local, ":", "-") + "\r\n" +
		"Max-Forwards: 70\r\nFrom: <sip:probe.internal>;tag=a1\r\nTo: <sip:peer.internal>\r\n" +
		"Call-ID: raw-" + local + "\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
	if _, err := conn.Write([]byte(opts)); err != nil {
		return err.Error()
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err.Error()
	}
	return line
}

// The edge's internal listener admits trusted cores only.
func TestEdgeInternalListenerAdmitsTrustedCoresOnly(t *testing.T) {
	e := newEnv(t)
	ed := e.startEdge("127.0.0.1:9", "edge1.internal") // no core: the link stays down
	defer ed.Close()
	edgeSIP, edgeOps := ed.Addr()

	core := accesstest.Material(t, e.nodeFiles("core1.internal"))
	conn, err := tls.Dial("tcp", edgeSIP, access.ClientConfig(core, "edge1.internal"))
	if err != nil {
		t.Fatal(err)
	}
	if line := rawOptions(t, conn); !strings.HasPrefix(line, "SIP/2.0 200") {
		t.Fatalf("trusted core: %q", line)
	}
	conn.Close()

	other := accesstest.Material(t, e.nodeFiles("edge2.internal"))
	conn, err = tls.Dial("tcp", edgeSIP, access.ClientConfig(other, "edge1.internal"))
	if err == nil {
		if line := rawOptions(t, conn); strings.HasPrefix(line, "SIP/2.0") {
			t.Fatalf("untrusted peer answered: %q", line)
		}
		conn.Close()
	}
	waitMetric(t, edgeOps, `portcullis_edge_mtls_refused_total{reason="name_not_allowed"}`, equals("1"))
	if got := metric(t, edgeOps, `portcullis_edge_internal_sip_requests_total{method="OPTIONS"}`); got != "1" {
		t.Fatalf("requests counted: %q", got)
	}
}

func TestCoreDrainRefusesNewWorkAndEdgeSeesIt(t *testing.T) {
	e := newEnv(t)
	c, ed, _, coreOps, edgeOps := e.startLinked()
	defer ed.Close()
	waitReadyz(t, edgeOps, 200)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	waitReadyz(t, coreOps, 503)
	// Keepalives on the open connection are now answered 503: the edge
	// stops counting on this core.
	body := waitReadyz(t, edgeOps, 503)
	if !strings.Contains(body, "503") {
		t.Fatalf("edge readyz %q", body)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}
