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
	"portcullis/internal/testport"
)

// baresipUA is baresip (Debian package, installed by `make test`), a SIP
// client no one here wrote, run as alice@example.test registering through
// the edge of dev mode over TLS, with its SIP trace (-s) in out and its
// menu on stdin.
type baresipUA struct {
	t     *testing.T
	dev   *proc
	out   testlog.Buffer
	stdin io.Writer
}

// startBaresip runs baresip with extra config lines and account
// parameters, and waits until it has registered through the edge.
func startBaresip(t *testing.T, ctx context.Context, dev *proc, data, password, config, account string) *baresipUA {
	t.Helper()
	bare, err := exec.LookPath("baresip")
	if err != nil {
		t.Fatal("baresip not found: run `make test` (it installs the Debian package baresip)")
	}
	bs := filepath.Join(t.TempDir(), "baresip")
	if err := os.MkdirAll(bs, 0o700); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(bs, "config"), "poll_method epoll\nsip_listen 127.0.0.1:"+strconv.Itoa(testport.TCP(t))+"\nsip_cafile "+filepath.Join(data, "pki", "ca.crt")+
		"\nmodule_path /usr/lib/baresip/modules\nmodule g711.so\nmodule_tmp uuid.so\nmodule_tmp account.so\nmodule_app menu.so\n"+config)
	write(t, filepath.Join(bs, "accounts"), `<sip:alice@example.test;transport=tls>;auth_pass=`+password+`;outbound="sip:127.0.0.1:15061;transport=tls";regint=600`+account+"\n")
	b := &baresipUA{t: t, dev: dev}
	cmd := exec.CommandContext(ctx, bare, "-s", "-f", bs)
	cmd.Dir = bs
	cmd.Stdout, cmd.Stderr = &b.out, &b.out
	if b.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	b.wait("registered through the edge", "200 OK () [1 binding]", 0)
	dev.waitLog("registered") // by the core, through the edge
	return b
}

// wait waits up to 15 s for s in baresip's output after position after,
// and returns the position past it.
func (b *baresipUA) wait(what, s string, after int) int {
	b.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if i := strings.Index(b.out.String()[after:], s); i >= 0 {
			return after + i + len(s)
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("baresip: never %s:\n%s\n--- portcullis:\n%s", what, b.out.String(), b.dev.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// baresip 1.0 speaks MD5 digest only and fails on a SHA-256 challenge
// (PROTOCOLS.md), so the realm offers MD5 alone (devMD5). It registers
// through the edge over TLS and receives a MESSAGE from an internal user.
func TestBaresipRegistersThroughEdgeAndReceivesIM(t *testing.T) {
	dev, data, pws := devMD5(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := startBaresip(t, ctx, dev, data, pws["sip:alice@example.test"], "", "")
	code, stdout, errOut := run(t, "portcullis", "client", "im", "--data", data, "--internal", "--user", "sip:bob@example.test",
		"--to", "sip:alice@example.test", "hello baresip")
	if code != 0 || !strings.Contains(stdout, "200 OK") {
		t.Fatalf("IM to baresip: %d %s %s", code, stdout, errOut)
	}
	at := b.wait("got the MESSAGE", "MESSAGE sip:", 0)
	b.wait("shown the IM", "hello baresip", at)
	dev.signal(syscall.SIGTERM)
	dev.wait()
}

// Calls with baresip through the edge, each way: an internal user (a Go
// phone on the core's users listener) calls baresip, which answers by
// itself; then baresip calls the internal user. Each time the callee gets
// the ACK and the call is hung up with BYE across the edge and the core.
func TestBaresipCallsThroughEdge(t *testing.T) {
	dev, data, pws := devMD5(t)
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
	// A sine source and a file player (48 kHz stereo, as ausine wants),
	// the menu on stdin, and calls answered by themselves.
	b := startBaresip(t, ctx, dev, data, pws["sip:alice@example.test"],
		"audio_source ausine,440\nausrc_srate 48000\nausrc_channels 2\nauplay_srate 48000\naudio_player aufile,"+filepath.Join(t.TempDir(), "heard.wav")+
			"\nmodule stdio.so\nmodule ausine.so\nmodule aufile.so\n", ";answermode=auto")
	at := len(b.out.String())

	// bob calls baresip, which answers; bob hangs up.
	sess, err := bob.Call(ctx, "sip:bob@example.test", "bob", bobPW, "sip:alice@example.test")
	if err != nil || sess.InviteResponse.StatusCode != 200 {
		t.Fatalf("bob calls baresip: %v\n%s", err, b.out.String())
	}
	if err := sess.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	at = b.wait("got the ACK", "ACK sip:", at)
	if err := sess.Bye(ctx); err != nil {
		t.Fatalf("bob hangs up: %v\n%s", err, b.out.String())
	}
	at = b.wait("got the BYE", "BYE sip:", at)

	// baresip calls bob, who answers; bob hangs up.
	if _, err := io.WriteString(b.stdin, "/dial sip:bob@example.test\n"); err != nil {
		t.Fatal(err)
	}
	siptest.Eventually(t, "bob gets baresip's ACK", func() bool { return bob.Acks.Load() == 1 })
	if err := bob.Incoming().Bye(ctx); err != nil {
		t.Fatalf("bob hangs up baresip's call: %v\n%s", err, b.out.String())
	}
	b.wait("got bob's BYE", "BYE sip:", at)
	dev.signal(syscall.SIGTERM)
	dev.wait()
}
