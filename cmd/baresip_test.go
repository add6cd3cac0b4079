package cmd_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"portcullis/internal/testlog"
)

// baresip (Debian package, installed by `make test`), a SIP client no one
// here wrote, registers through the edge over TLS and receives a MESSAGE
// from an internal user. baresip 1.0 speaks MD5 digest only and fails on a
// SHA-256 challenge (PROTOCOLS.md), so the realm offers MD5 alone.
func TestBaresipRegistersThroughEdgeAndReceivesIM(t *testing.T) {
	bare, err := exec.LookPath("baresip")
	if err != nil {
		t.Fatal("baresip not found: run `make test` (it installs the Debian package baresip)")
	}
	dev, data, pws := devMD5(t)
	alicePW := pws["sip:alice@example.test"]
	dir := t.TempDir()
	bs := filepath.Join(dir, "baresip")
	if err := os.MkdirAll(bs, 0o700); err != nil {
		t.Fatal(err)
	}
	port := freeTCPPort(t)
	write(t, filepath.Join(bs, "config"), "poll_method epoll\nsip_listen 127.0.0.1:"+strconv.Itoa(port)+"\nsip_cafile "+filepath.Join(data, "pki", "ca.crt")+
		"\nmodule_path /usr/lib/baresip/modules\nmodule g711.so\nmodule_tmp uuid.so\nmodule_tmp account.so\nmodule_app menu.so\n")
	write(t, filepath.Join(bs, "accounts"), `<sip:alice@example.test;transport=tls>;auth_pass=`+alicePW+`;outbound="sip:127.0.0.1:15061;transport=tls";regint=600`+"\n")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bare, "-s", "-f", bs)
	cmd.Dir = bs
	var out testlog.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(out.String(), "200 OK () [1 binding]") {
		if time.Now().After(deadline) {
			t.Fatalf("baresip did not register through the edge:\n%s\n--- portcullis:\n%s", out.String(), dev.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	dev.waitLog("registered") // by the core, through the edge

	code, stdout, errOut := run(t, "portcullis", "client", "im", "--data", data, "--internal", "--user", "sip:bob@example.test",
		"--to", "sip:alice@example.test", "hello baresip")
	if code != 0 || !strings.Contains(stdout, "200 OK") {
		t.Fatalf("IM to baresip: %d %s %s", code, stdout, errOut)
	}
	for !strings.Contains(out.String(), "hello baresip") {
		if time.Now().After(deadline) {
			t.Fatalf("baresip never got the MESSAGE:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(out.String(), "MESSAGE sip:") {
		t.Fatal("no MESSAGE in baresip's SIP trace")
	}
	dev.signal(syscall.SIGTERM)
	dev.wait()
}
