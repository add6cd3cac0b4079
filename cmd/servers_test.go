package cmd_test

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestCheckAcceptsValidConfigs(t *testing.T) {
	d := newDeployment(t)
	write(t, d.edgeFile, d.edgeYAML("127.0.0.1:5061"))
	for name, file := range map[string]string{"portcullis-core": d.coreFile, "portcullis-edge": d.edgeFile} {
		code, out, errOut := run(t, name, "--config", file, "--check")
		if code != 0 || !strings.Contains(out, "configuration is valid") {
			t.Errorf("%s --check: %d %q %q", name, code, out, errOut)
		}
	}
}

func TestInvalidConfigExits2WithEveryProblemAndStartsNothing(t *testing.T) {
	d := newDeployment(t)
	// A port this test holds: if the core started anything, it would fail
	// differently; and the file has three problems on known lines.
	bad := strings.Replace(d.coreYAML("loud", "127.0.0.1:0"), "  hostname: core1.internal\n", "  hostname: core1.internal\n  hostnme: typo\n", 1)
	bad = strings.Replace(bad, "trusted_edges: [edge1.internal]", "trusted_edges: []", 1)
	write(t, d.coreFile, bad)
	for _, args := range [][]string{{"--config", d.coreFile, "--check"}, {"--config", d.coreFile}} {
		code, _, errOut := run(t, "portcullis-core", args...)
		if code != 2 {
			t.Fatalf("%v: exit %d, want 2\n%s", args, code, errOut)
		}
		for _, want := range []string{
			d.coreFile + ":2: log.level: must be one of debug, info, warn, error",
			d.coreFile + ":10: sip.hostnme: unknown key",
			d.coreFile + ":15: trusted_edges: must list at least one edge certificate name",
		} {
			if !strings.Contains(errOut, want) {
				t.Errorf("%v: stderr lacks %q:\n%s", args, want, errOut)
			}
		}
		if strings.Contains(errOut, "listening") {
			t.Errorf("started despite invalid config:\n%s", errOut)
		}
	}
	code, _, errOut := run(t, "portcullis-edge", "--config", filepath.Join(d.dir, "missing.yaml"))
	if code != 2 || !strings.Contains(errOut, "missing.yaml: cannot read") {
		t.Fatalf("missing file: exit %d %q", code, errOut)
	}
}

func TestMissingCertificateNamesFileAndCommand(t *testing.T) {
	d := newDeployment(t)
	if err := os.Remove(filepath.Join(d.dir, "pki", "core1.internal.crt")); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := run(t, "portcullis-core", "--config", d.coreFile, "--check")
	want := filepath.Join(d.dir, "pki", "core1.internal.crt") + ": file does not exist; create it with `portcullis pki issue --dir " + filepath.Join(d.dir, "pki") + " --name core1.internal"
	if code != 2 || !strings.Contains(errOut, want) {
		t.Fatalf("exit %d, stderr:\n%s\nwant %q", code, errOut, want)
	}
}

func TestServersLinkReloadAndDrainAsProcesses(t *testing.T) {
	d := newDeployment(t)
	core := start(t, "portcullis-core", "--config", d.coreFile)
	l := core.waitLog("core listening")
	coreSIP, coreOps := l["sip_mtls"].(string), l["metrics"].(string)
	write(t, d.edgeFile, d.edgeYAML(coreSIP))
	edge := start(t, "portcullis-edge", "--config", d.edgeFile)
	l = edge.waitLog("edge listening")
	edgeOps := l["metrics"].(string)
	edge.waitLog("link to core up")
	waitHTTP(t, edgeOps, "/readyz", 200)
	waitHTTP(t, coreOps, "/healthz", 200)
	if got := metricValue(t, coreOps, "portcullis_core_edge_links"); got != "1" {
		t.Fatalf("core edge links %q", got)
	}

	// SIGHUP with a broken file: rejected with file:line, old config kept.
	write(t, d.coreFile, d.coreYAML("chatty", coreSIP))
	core.signal(syscall.SIGHUP)
	rej := core.waitLog("config reload rejected; keeping the running config")
	if msg, _ := rej["error"].(string); !strings.Contains(msg, d.coreFile+":2: log.level") {
		t.Fatalf("rejection does not name file:line: %v", rej)
	}
	waitHTTP(t, coreOps, "/readyz", 200)
	if got := metricValue(t, coreOps, `portcullis_core_config_reloads_total{result="rejected"}`); got != "1" {
		t.Fatalf("rejected reloads %q", got)
	}

	// A good file is applied; a changed listener address is kept and logged.
	write(t, d.coreFile, strings.Replace(d.coreYAML("debug", "127.0.0.1:1"), "[edge1.internal]", "[edge1.internal, edge2.internal]", 1))
	core.signal(syscall.SIGHUP)
	core.waitLog("config reloaded")
	if core.count("reload: these settings change only on restart; keeping the running values") != 1 {
		t.Fatalf("restart-only change not reported:\n%s", core.output())
	}
	if got := metricValue(t, coreOps, `portcullis_core_config_reloads_total{result="applied"}`); got != "1" {
		t.Fatalf("applied reloads %q", got)
	}
	if c, err := net.Dial("tcp", coreSIP); err != nil {
		t.Fatalf("SIP listener closed by reload: %v", err)
	} else {
		c.Close()
	}

	// SIGTERM drains the core and it exits 0; the edge notices.
	core.signal(syscall.SIGTERM)
	if code := core.wait(); code != 0 {
		t.Fatalf("core exit %d:\n%s", code, core.output())
	}
	core.waitLog("drained")
	body := waitHTTP(t, edgeOps, "/readyz", 503)
	if !strings.Contains(body, "link to core is down") {
		t.Fatalf("edge readyz %q", body)
	}
	edge.signal(syscall.SIGTERM)
	if code := edge.wait(); code != 0 {
		t.Fatalf("edge exit %d:\n%s", code, edge.output())
	}
}

func TestStartFailsCleanlyWhenPortIsTaken(t *testing.T) {
	d := newDeployment(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	write(t, d.coreFile, d.coreYAML("info", ln.Addr().String()))
	code, _, errOut := run(t, "portcullis-core", "--config", d.coreFile)
	if code != 1 || !strings.Contains(errOut, "sip.listen "+ln.Addr().String()) || !strings.Contains(errOut, "address already in use") {
		t.Fatalf("exit %d:\n%s", code, errOut)
	}
}

// An edge whose open-file limit is below what its caps can use says so at
// start, with the limit and the need; one with room says nothing.
func TestEdgeWarnsOfALowOpenFileLimit(t *testing.T) {
	const msg = "open-file limit below what the caps can use"
	d := newDeployment(t)
	write(t, d.edgeFile, d.edgeYAML("127.0.0.1:9")) // no core: the link stays down
	// ulimit sets the hard limit too, so Go cannot raise it at start; 60
	// is below the smallest reserve the edge counts (64).
	low := startCmd(t, exec.Command("sh", "-c", `ulimit -n 60 && exec "$0" --config "$1"`, filepath.Join(bin, "portcullis-edge"), d.edgeFile))
	l := low.waitLog(msg)
	if l["limit"] != 60.0 || l["needed"].(float64) <= 60 {
		t.Fatalf("warning %v: want limit 60 and a need above it", l)
	}
	low.waitLog("edge listening")

	ok := start(t, "portcullis-edge", "--config", d.edgeFile)
	ok.waitLog("edge listening")
	if n := ok.count(msg); n != 0 {
		t.Fatalf("an edge with the machine's limit warned %d times:\n%s", n, ok.output())
	}
}
