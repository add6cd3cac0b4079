// Package cmd_test runs the built binaries as an operator would: real
// processes, real signals, real sockets.
package cmd_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "portcullis-bin")
	if err != nil {
		panic(err)
	}
	bin = dir
	for _, name := range []string{"portcullis", "portcullis-core", "portcullis-edge"} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, name), "./"+name).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", name, err, out)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// run runs a binary to completion and returns its exit code and output.
func run(t *testing.T, name string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(bin, name), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, stdout.String(), stderr.String()
}

// proc is a server process whose JSON log lines are collected.
type proc struct {
	t    *testing.T
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs []map[string]any
	raw  []string
	done chan struct{}
	code int
}

func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	return startCmd(t, exec.Command(filepath.Join(bin, name), args...))
}

// startCmd starts cmd as a server process (start's general form).
func startCmd(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{t: t, cmd: cmd, done: make(chan struct{})}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			var m map[string]any
			_ = json.Unmarshal([]byte(line), &m)
			p.mu.Lock()
			p.raw = append(p.raw, line)
			if m != nil {
				p.logs = append(p.logs, m)
			}
			p.mu.Unlock()
		}
		err := p.cmd.Wait()
		if ee, ok := err.(*exec.ExitError); ok {
			p.code = ee.ExitCode()
		}
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

// waitLog waits for a log line whose msg is msg and returns it.
func (p *proc) waitLog(msg string) map[string]any {
	p.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for seen := 0; ; {
		p.mu.Lock()
		for ; seen < len(p.logs); seen++ {
			if p.logs[seen]["msg"] == msg {
				l := p.logs[seen]
				p.mu.Unlock()
				return l
			}
		}
		p.mu.Unlock()
		select {
		case <-p.done:
			p.t.Fatalf("process exited (%d) before logging %q:\n%s", p.code, msg, p.output())
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("no %q log line:\n%s", msg, p.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *proc) count(msg string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, l := range p.logs {
		if l["msg"] == msg {
			n++
		}
	}
	return n
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.raw, "\n")
}

func (p *proc) signal(s syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(s); err != nil {
		p.t.Fatal(err)
	}
}

func (p *proc) wait() int {
	p.t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(20 * time.Second):
		p.t.Fatalf("process did not exit:\n%s", p.output())
		return -1
	}
}

func httpGet(addr, path string) (int, string) {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	res, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func waitHTTP(t *testing.T, addr, path string, want int) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, body := httpGet(addr, path)
		if code == want {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s%s: %d %q, want %d", addr, path, code, body, want)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func metricValue(t *testing.T, addr, series string) string {
	t.Helper()
	_, body := httpGet(addr, "/metrics")
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, series+" ") {
			return strings.TrimPrefix(line, series+" ")
		}
	}
	return ""
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// deployment is a PKI made with the CLI and config files for both servers,
// with relative certificate paths, ephemeral ports and fast keepalives.
type deployment struct {
	dir, coreFile, edgeFile string
}

func newDeployment(t *testing.T) *deployment {
	t.Helper()
	d := &deployment{dir: t.TempDir()}
	pki := filepath.Join(d.dir, "pki")
	for _, args := range [][]string{
		{"pki", "init", "--dir", pki},
		{"pki", "issue", "--dir", pki, "--name", "core1.internal", "--san", "core1.internal", "--san", "127.0.0.1", "--server", "--client"},
		{"pki", "issue", "--dir", pki, "--name", "edge1.internal", "--san", "edge1.internal", "--server", "--client"},
	} {
		if code, out, errOut := run(t, "portcullis", args...); code != 0 {
			t.Fatalf("portcullis %v: %d\n%s%s", args, code, out, errOut)
		}
	}
	if code, out, errOut := run(t, "portcullis", "turn-cred", "--new-secret", filepath.Join(d.dir, "turn.secret")); code != 0 {
		t.Fatalf("new secret: %d %s%s", code, out, errOut)
	}
	d.coreFile = filepath.Join(d.dir, "core.yaml")
	d.edgeFile = filepath.Join(d.dir, "edge.yaml")
	write(t, d.coreFile, d.coreYAML("info", "127.0.0.1:0"))
	return d
}

func (d *deployment) coreYAML(level, listen string) string {
	return `log:
  level: ` + level + `
metrics:
  listen: 127.0.0.1:0
shutdown:
  drain_timeout: 3s
sip:
  listen: ` + listen + `
  hostname: core1.internal
tls:
  ca_file: pki/ca.crt
  cert_file: pki/core1.internal.crt
  key_file: pki/core1.internal.key
trusted_edges: [edge1.internal]
store:
  driver: sqlite
  path: core.db
https:
  listen: 127.0.0.1:0
turn:
  secret_file: turn.secret
registrar:
  domains: [{domain: example.test, algorithms: [SHA-256, MD5]}]
`
}

func (d *deployment) edgeYAML(coreAddr string) string {
	return `metrics:
  listen: 127.0.0.1:0
shutdown:
  drain_timeout: 3s
internal:
  listen: 127.0.0.1:0
  hostname: edge1.internal
  trusted_cores: [core1.internal]
tls:
  ca_file: pki/ca.crt
  cert_file: pki/edge1.internal.crt
  key_file: pki/edge1.internal.key
core:
  address: ` + coreAddr + `
  server_name: core1.internal
  keepalive_interval: 200ms
  keepalive_timeout: 1s
  reconnect_min: 50ms
  reconnect_max: 500ms
`
}
