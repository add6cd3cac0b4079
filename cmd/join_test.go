package cmd_test

import (
	"bufio"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// joiner is a `portcullis join` process: lines go to its standard input,
// its standard output is kept.
type joiner struct {
	t    *testing.T
	in   io.WriteCloser
	mu   sync.Mutex
	out  []string
	cmd  *exec.Cmd
	args []string
}

// joiners are each test's joiner processes, whose output a failed wait
// shows (what another participant saw, or why it never joined).
var joiners sync.Map // *testing.T → *[]*joiner

func startJoin(t *testing.T, args ...string) *joiner {
	t.Helper()
	j := &joiner{t: t, cmd: exec.Command(filepath.Join(bin, "portcullis"), append([]string{"join"}, args...)...), args: args}
	all, loaded := joiners.LoadOrStore(t, &[]*joiner{})
	if !loaded {
		t.Cleanup(func() { joiners.Delete(t) })
	}
	*all.(*[]*joiner) = append(*all.(*[]*joiner), j)
	var err error
	if j.in, err = j.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, _ := j.cmd.StdoutPipe()
	j.cmd.Stderr = j.cmd.Stdout
	if err := j.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			j.mu.Lock()
			j.out = append(j.out, sc.Text())
			j.mu.Unlock()
		}
	}()
	t.Cleanup(func() { _ = j.cmd.Process.Kill(); _ = j.cmd.Wait() })
	return j
}

func (j *joiner) say(line string) { _, _ = io.WriteString(j.in, line+"\n") }

func (j *joiner) wait(text string) {
	j.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		j.mu.Lock()
		all := strings.Join(j.out, "\n")
		j.mu.Unlock()
		if strings.Contains(all, text) {
			return
		}
		if time.Now().After(deadline) {
			others := ""
			if js, ok := joiners.Load(j.t); ok {
				for _, o := range *js.(*[]*joiner) {
					if o != j {
						o.mu.Lock()
						others += fmt.Sprintf("\njoin %s:\n%s", strings.Join(o.args, " "), strings.Join(o.out, "\n"))
						o.mu.Unlock()
					}
				}
			}
			j.t.Fatalf("no %q in:\n%s\nthe other joiners:%s", text, all, others)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestJoinAndDemo(t *testing.T) {
	data := filepath.Join(t.TempDir(), "dev")
	dev := start(t, "portcullis", "dev", "--data", data)
	dev.waitLog("portcullis dev ready")
	code, out, errOut := run(t, "portcullis", "meeting", "create", "--organizer", "sip:alice@example.test", "--admission", "anonymous", "--data", data)
	uri := regexp.MustCompile(`sip:alice@example.test;gruu;opaque=app:conf:focus:id:[A-Z0-9]+`).FindString(out)
	key := regexp.MustCompile(`key (\d{8})`).FindStringSubmatch(out)
	if code != 0 || uri == "" || key == nil {
		t.Fatalf("meeting create: %d %q %q", code, out, errOut)
	}
	alice := startJoin(t, uri, "--data", data, "--internal", "--user", "sip:alice@example.test")
	alice.wait("+ sip:alice@example.test (organizer")
	bob := startJoin(t, uri, "--data", data, "--user", "sip:bob@example.test") // through the edge
	alice.wait("+ sip:bob@example.test (attendee")
	guest := startJoin(t, uri, "--data", data, "--anonymous", "--name", "Grace Guest", "--key", key[1])
	alice.wait(`@anonymous.invalid (attendee, "Grace Guest")`)

	bob.say("hello from the road")
	alice.wait("sip:bob@example.test: hello from the road")
	guest.wait("sip:bob@example.test: hello from the road")
	bob.say("/lock")
	bob.wait("/lock refused: forbidden")
	alice.say("/promote bob@example.test")
	bob.wait("~ sip:bob@example.test (presenter")
	bob.say("/lock")
	alice.wait("* locked")
	// A wrong key, and a join while locked.
	if code, _, errOut := run(t, "portcullis", "join", uri, "--data", data, "--anonymous", "--name", "Mallory", "--key", "00000000"); code != 1 || !strings.Contains(errOut, "407") {
		t.Fatalf("wrong key: exit %d %q", code, errOut)
	}
	if code, _, errOut := run(t, "portcullis", "join", uri, "--data", data, "--user", "sip:carol@example.test"); code != 1 || !strings.Contains(errOut, "403") {
		t.Fatalf("locked: exit %d %q", code, errOut)
	}
	alice.say("/eject " + strings.TrimPrefix(regexp.MustCompile(`sip:grace-guest-[0-9a-f]+@anonymous.invalid`).FindString(strings.Join(alice.out, "\n")), "sip:"))
	guest.wait("* removed")
	alice.wait("- sip:grace-guest-")
	_ = bob.in.Close() // end of input leaves
	alice.wait("- sip:bob@example.test")
	_ = alice.in.Close()
	if err := alice.cmd.Wait(); err != nil {
		t.Fatalf("alice's join ended with %v", err)
	}

	// The demo needs the dev ports: stop dev mode first.
	_ = dev.cmd.Process.Kill()
	<-dev.done
	code, out, errOut = run(t, "portcullis", "demo")
	for _, want := range []string{
		"+ sip:bob@example.test (attendee", "+ sip:carol@example.test (attendee", `@anonymous.invalid (attendee, "Grace")`,
		"sip:carol@example.test: The agenda: _http://intranet.example.test/agenda",
		"~ sip:bob@example.test (presenter", "* locked", "a late guest: join: refused: 403", "carol: deleteUser refused: forbidden",
		"- sip:grace-", "- sip:bob@example.test",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	if code != 0 || t.Failed() {
		t.Fatalf("demo: exit %d\n%s\n%s", code, out, errOut)
	}
}
