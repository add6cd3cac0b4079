package cmd_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"portcullis/internal/testlog"
	"portcullis/internal/testport"
)

// devMD5 starts dev mode with an MD5-only realm (for clients that speak
// only MD5 digest) and returns its data folder and the users' passwords.
func devMD5(t *testing.T) (*proc, string, map[string]string) {
	t.Helper()
	cfg, err := os.ReadFile("../configs/dev.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	devCfg := filepath.Join(dir, "dev-md5.yaml")
	write(t, devCfg, strings.Replace(string(cfg), "algorithms: [SHA-256, MD5]", "algorithms: [MD5]", 1))
	data := filepath.Join(dir, "data")
	dev := start(t, "portcullis", "dev", "--data", data, "--config", devCfg)
	dev.waitLog("portcullis dev ready")
	raw, err := os.ReadFile(filepath.Join(data, "dev-users.txt"))
	if err != nil {
		t.Fatal(err)
	}
	pws := map[string]string{}
	for _, line := range strings.Split(string(raw), "\n") {
		if aor, pw, ok := strings.Cut(line, " "); ok {
			pws[aor] = pw
		}
	}
	return dev, data, pws
}

// sipp (Debian package sip-tester, built without TLS) drives the edge over
// TCP through stunnel (client mode, verifying the edge's certificate):
// REGISTER with digest, and MESSAGE to an internal user.
func TestSippThroughStunnel(t *testing.T) {
	for _, tool := range []string{"sipp", "stunnel"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: run `make test` (it installs sip-tester and stunnel4)", tool)
		}
	}
	dev, data, pws := devMD5(t)
	dir := t.TempDir()
	port := testport.TCP(t)
	conf := filepath.Join(dir, "stunnel.conf")
	write(t, conf, "foreground = yes\npid =\n[sip]\nclient = yes\naccept = 127.0.0.1:"+strconv.Itoa(port)+
		"\nconnect = 127.0.0.1:15061\nCAfile = "+filepath.Join(data, "pki", "ca.crt")+"\nverifyChain = yes\ncheckHost = edge.dev.internal\n")
	stunnel := exec.Command("stunnel", conf)
	if err := stunnel.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stunnel.Process.Kill(); _ = stunnel.Wait() })
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port)); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("stunnel did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// bob listens inside, to receive sipp's MESSAGE.
	listen := exec.Command(filepath.Join(bin, "portcullis"), "client", "listen", "--data", data, "--internal", "--user", "sip:bob@example.test")
	var heard testlog.Buffer
	listen.Stdout = &heard
	if err := listen.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = listen.Process.Signal(syscall.SIGTERM); _ = listen.Wait() })
	for !strings.Contains(heard.String(), "listening as") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)

	users := filepath.Join(dir, "users.csv")
	write(t, users, "SEQUENTIAL\nalice;example.test;"+pws["sip:alice@example.test"]+";bob\n")
	for _, sc := range []string{"register.xml", "message.xml"} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, "sipp", "127.0.0.1:"+strconv.Itoa(port), "-t", "t1", "-i", "127.0.0.1",
			"-sf", filepath.Join("testdata", "sipp", sc), "-inf", users, "-au", "alice", "-ap", pws["sip:alice@example.test"], "-m", "1", "-timeout", "20s", "-timeout_error", "-nostdin",
			"-trace_err", "-error_file", filepath.Join(dir, sc+".err"))
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			errs, _ := os.ReadFile(filepath.Join(dir, sc+".err"))
			t.Fatalf("sipp %s: %v\n%s\n%s\n--- portcullis:\n%s", sc, err, out, errs, dev.output())
		}
	}
	for !strings.Contains(heard.String(), "sip:alice@example.test: hello from sipp") {
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatalf("bob never got sipp's IM: %q", heard.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
