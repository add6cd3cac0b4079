package relay_test

import (
	"context"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"portcullis/internal/testport"
)

// coturn's own clients (Debian package coturn, installed by `make test`)
// against the relay: STUN binding, and turnutils_uclient over UDP, TCP and
// TLS, client-to-client and through a peer, with ChannelData and with Send
// indications, all with zero loss.

func coturnTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: run `make test` (it installs the Debian package coturn)", name)
	}
	return p
}

func run(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, coturnTool(t, name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestCoturnStunclient(t *testing.T) {
	e := start(t, testConfig(t))
	_, port, _ := net.SplitHostPort(e.udp)
	out := run(t, 20*time.Second, "turnutils_stunclient", "-p", port, "127.0.0.1")
	if !regexp.MustCompile(`UDP reflexive addr: 127\.0\.0\.1:\d+`).MatchString(out) {
		t.Fatalf("no reflexive address:\n%s", out)
	}
}

var (
	sentRecv = regexp.MustCompile(`tot_send_msgs=(\d+), tot_recv_msgs=(\d+)`)
	lost     = regexp.MustCompile(`Total lost packets (\d+) \(`)
)

func TestCoturnUclient(t *testing.T) {
	e := start(t, testConfig(t))
	peerPort := testport.UDP(t)
	peer := exec.Command(coturnTool(t, "turnutils_peer"), "-L", "127.0.0.1", "-p", strconv.Itoa(peerPort))
	if err := peer.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = peer.Process.Kill(); _ = peer.Wait() })
	time.Sleep(200 * time.Millisecond)
	secret := string(e.secret)
	port := func(a string) string { _, p, _ := net.SplitHostPort(a); return p }
	modes := []struct {
		name string
		args []string
	}{
		{"udp client-to-client", []string{"-p", port(e.udp), "-y"}},
		{"tcp client-to-client", []string{"-t", "-p", port(e.tcp), "-y"}},
		{"tls client-to-client", []string{"-t", "-S", "-p", port(e.tls), "-y"}},
		{"udp peer", []string{"-p", port(e.udp)}},
		{"tcp peer", []string{"-t", "-p", port(e.tcp)}},
		{"tls peer", []string{"-t", "-S", "-p", port(e.tls)}},
		{"udp peer send-indications", []string{"-p", port(e.udp), "-s"}},
		{"tcp client-to-client send-indications", []string{"-t", "-p", port(e.tcp), "-y", "-s"}},
		{"tcp relays client-to-client (RFC 6062)", []string{"-T", "-p", port(e.tcp)}},
		{"tcp relays over tls client-to-client (RFC 6062)", []string{"-T", "-S", "-p", port(e.tls)}},
	}
	// uclient paces its sends, so all modes run at once (t.Parallel would
	// cap them at GOMAXPROCS).
	outs := make([]string, len(modes))
	errs := make([]error, len(modes))
	var wg sync.WaitGroup
	for i, m := range modes {
		args := append([]string{"-W", secret, "-u", "coturn" + strconv.Itoa(i), "-n", "100", "-l", "170", "-m", "2",
			"-e", "127.0.0.1", "-r", strconv.Itoa(peerPort)}, m.args...)
		args = append(args, "127.0.0.1")
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, coturnTool(t, "turnutils_uclient"), args...).CombinedOutput()
			outs[i], errs[i] = string(out), err
		}()
	}
	wg.Wait()
	for i, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			out := outs[i]
			if errs[i] != nil {
				t.Fatalf("turnutils_uclient: %v\n%s", errs[i], out)
			}
			sr := sentRecv.FindAllStringSubmatch(out, -1)
			ls := lost.FindStringSubmatch(out)
			if len(sr) == 0 || ls == nil {
				t.Fatalf("no totals in output:\n%s", out)
			}
			final := sr[len(sr)-1]
			sent, _ := strconv.Atoi(final[1])
			if sent < 200 || final[2] != final[1] || ls[1] != "0" {
				t.Fatalf("sent %s, received %s, lost %s; want at least 200 sent, all received, none lost:\n%s", final[1], final[2], ls[1], out)
			}
		})
	}
	t.Cleanup(func() {
		if got := e.metric("portcullis_relay_allocations_failed_total", "reason", "other"); got != 0 {
			t.Errorf("%v allocations failed", got)
		}
	})
}
