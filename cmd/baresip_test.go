package cmd_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"portcullis/internal/siptest"
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

// Calls with baresip through the edge, each way: an internal user (a Go
// phone on the core's users listener) calls baresip, which answers by
// itself; then baresip calls the internal user. Each time the callee gets
// the ACK and the call is hung up with BYE across the edge and the core.
func TestBaresipCallsThroughEdge(t *testing.T) {
	bare, err := exec.LookPath("baresip")
	if err != nil {
		t.Fatal("baresip not found: run `make test` (it installs the Debian package baresip)")
	}
	dev, data, pws := devMD5(t)
	dir := t.TempDir()
	bs := filepath.Join(dir, "baresip")
	if err := os.MkdirAll(bs, 0o700); err != nil {
		t.Fatal(err)
	}
	port := freeTCPPort(t)
	write(t, filepath.Join(bs, "config"), "poll_method epoll\nsip_listen 127.0.0.1:"+strconv.Itoa(port)+"\nsip_cafile "+filepath.Join(data, "pki", "ca.crt")+
		"\naudio_source ausine,440\nausrc_srate 48000\nausrc_channels 2\nauplay_srate 48000\naudio_player aufile,"+filepath.Join(dir, "heard.wav")+
		"\nmodule_path /usr/lib/baresip/modules\nmodule stdio.so\nmodule g711.so\nmodule ausine.so\nmodule aufile.so\nmodule_tmp uuid.so\nmodule_tmp account.so\nmodule_app menu.so\n")
	write(t, filepath.Join(bs, "accounts"), `<sip:alice@example.test;transport=tls>;auth_pass=`+pws["sip:alice@example.test"]+
		`;outbound="sip:127.0.0.1:15061;transport=tls";regint=600;answermode=auto`+"\n")

	roots := x509.NewCertPool()
	ca, err := os.ReadFile(filepath.Join(data, "pki", "ca.crt"))
	if err != nil || !roots.AppendCertsFromPEM(ca) {
		t.Fatalf("dev CA: %v", err)
	}
	bob := siptest.NewPhone(siptest.New(t, "127.0.0.1:25063", &tls.Config{RootCAs: roots, ServerName: "core.dev.internal", MinVersion: tls.VersionTLS12}),
		"sip:bob@127.0.0.1:7300;transport=tls", true)
	bobPW := pws["sip:bob@example.test"]
	if res := bob.Register("sip:bob@example.test", "bob", bobPW, "<sip:bob@127.0.0.1:7300;transport=tls>"); res.StatusCode != 200 {
		t.Fatalf("bob registers: %d", res.StatusCode)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bare, "-s", "-f", bs)
	cmd.Dir = bs
	var out testlog.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	waitOut := func(what, s string, after int) int {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			if i := strings.Index(out.String()[after:], s); i >= 0 {
				return after + i + len(s)
			}
			if time.Now().After(deadline) {
				t.Fatalf("baresip: never %s:\n%s\n--- portcullis:\n%s", what, out.String(), dev.output())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	at := waitOut("registered through the edge", "200 OK () [1 binding]", 0)

	// bob calls baresip, which answers; bob hangs up.
	sess, err := bob.Call(ctx, "sip:bob@example.test", "bob", bobPW, "sip:alice@example.test")
	if err != nil || sess.InviteResponse.StatusCode != 200 {
		t.Fatalf("bob calls baresip: %v\n%s", err, out.String())
	}
	if err := sess.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	at = waitOut("got the ACK", "ACK sip:", at)
	if err := sess.Bye(ctx); err != nil {
		t.Fatalf("bob hangs up: %v\n%s", err, out.String())
	}
	at = waitOut("got the BYE", "BYE sip:", at)

	// baresip calls bob, who answers; bob hangs up.
	if _, err := io.WriteString(stdin, "/dial sip:bob@example.test\n"); err != nil {
		t.Fatal(err)
	}
	siptest.Eventually(t, "bob gets baresip's ACK", func() bool { return bob.Acks.Load() == 1 })
	if err := bob.Incoming().Bye(ctx); err != nil {
		t.Fatalf("bob hangs up baresip's call: %v\n%s", err, out.String())
	}
	waitOut("got bob's BYE", "BYE sip:", at)
	dev.signal(syscall.SIGTERM)
	dev.wait()
}
