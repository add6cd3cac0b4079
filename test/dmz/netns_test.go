package dmz_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// lab is a set of network namespaces made by one test, named with a prefix
// of its own; everything is removed when the test ends.
type lab struct {
	t      *testing.T
	prefix string
}

func newLab(t *testing.T) *lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test builds network namespaces and needs root (CI runs as root; run `sudo make test` here)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("ip (iproute2) is required: apt-get install iproute2")
	}
	l := &lab{t: t, prefix: fmt.Sprintf("pc%d", os.Getpid()%100000)}
	return l
}

func (l *lab) ns(name string) string { return l.prefix + "-" + name }

func (l *lab) run(args ...string) {
	l.t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// addNS makes a namespace with loopback up.
func (l *lab) addNS(name string) {
	l.t.Helper()
	ns := l.ns(name)
	l.run("ip", "netns", "add", ns)
	l.t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	l.run("ip", "-n", ns, "link", "set", "lo", "up")
}

// link joins two namespaces with a veth pair and gives each end an address
// (CIDR).
func (l *lab) link(a, aAddr, b, bAddr string) {
	l.t.Helper()
	ea, eb := l.ifname(a, b), l.ifname(b, a)
	l.run("ip", "link", "add", ea, "netns", l.ns(a), "type", "veth", "peer", "name", eb, "netns", l.ns(b))
	for _, s := range [][3]string{{a, ea, aAddr}, {b, eb, bAddr}} {
		l.run("ip", "-n", l.ns(s[0]), "addr", "add", s[2], "dev", s[1])
		l.run("ip", "-n", l.ns(s[0]), "link", "set", s[1], "up")
	}
}

func (l *lab) ifname(from, to string) string {
	n := "v" + from + to
	if len(n) > 15 {
		n = n[:15]
	}
	return n
}

// inNS runs fn on an OS thread switched into the namespace: sockets fn
// creates belong to it. The thread is never switched back; it ends with
// the goroutine (runtime.LockOSThread without Unlock).
func (l *lab) inNS(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		sent := false
		defer func() { // fn called t.Fatal (runtime.Goexit): do not leave the caller waiting
			if !sent {
				errc <- fmt.Errorf("aborted in namespace %s", name)
			}
		}()
		f, err := os.Open(filepath.Join("/var/run/netns", l.ns(name)))
		if err != nil {
			sent = true
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			sent = true
			errc <- fmt.Errorf("setns %s: %w", name, err)
			return
		}
		err = fn()
		sent = true
		errc <- err
	}()
	return <-errc
}

// reachable reports whether a TCP connection from namespace ns to addr
// succeeds within a second.
func (l *lab) reachable(ns, addr string) bool {
	return l.inNS(ns, func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}) == nil
}

// proc is a process of the test running in a namespace, its output kept.
type proc struct {
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// start runs a command in a namespace until the test ends (SIGTERM, then
// SIGKILL after 5 s); its output goes to the test log when the test fails.
func (l *lab) start(ns, name string, args ...string) *proc {
	l.t.Helper()
	p := &proc{name: name, done: make(chan struct{})}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", l.ns(ns)}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		l.t.Fatalf("%s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	l.t.Cleanup(func() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
		if l.t.Failed() {
			l.t.Logf("---- %s output:\n%s", name, lastLines(p.output(), 60))
		}
	})
	return p
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// wait waits (bounded) for text in the process's output.
func (p *proc) wait(t *testing.T, text string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(p.output(), text) {
		select {
		case <-p.done:
			t.Fatalf("%s exited before %q:\n%s", p.name, text, lastLines(p.output(), 40))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %q within %s:\n%s", p.name, text, d, lastLines(p.output(), 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// exec runs a command in a namespace to its end (bounded) and returns its
// output.
func (l *lab) exec(ns string, args ...string) string {
	l.t.Helper()
	out, err := l.try(ns, args...)
	if err != nil {
		l.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// try is exec that leaves a failed exit to the caller.
func (l *lab) try(ns string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.ns(ns)}, args...)...).CombinedOutput()
	return string(out), err
}
