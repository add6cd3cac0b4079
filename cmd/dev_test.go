package cmd_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
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
		"edge sip-mtls-internal":   "127.0.0.1:15062",
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
