package cmd_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestUserCommands(t *testing.T) {
	d := newDeployment(t)
	cfg := d.coreFile
	pwFile := filepath.Join(d.dir, "pw")
	write(t, pwFile, "correct horse battery\n")

	if code, out, errOut := run(t, "portcullis", "user", "add", "sip:alice@Example.Test", "--config", cfg, "--password-file", pwFile); code != 0 {
		t.Fatalf("add: %d %s %s", code, out, errOut)
	}
	// From standard input when it is not a terminal.
	cmd := exec.Command(filepath.Join(bin, "portcullis"), "user", "add", "sip:bob@example.test", "--config", cfg)
	cmd.Stdin = strings.NewReader("another long one\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("add from stdin: %v %s", err, out)
	}
	code, out, _ := run(t, "portcullis", "user", "list", "--config", cfg)
	if code != 0 || !strings.Contains(out, "sip:alice@example.test\tenabled") || !strings.Contains(out, "sip:bob@example.test\tenabled") {
		t.Fatalf("list: %d %q", code, out)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"add", "sip:alice@example.test", "--password-file", pwFile}, 1, "user already exists"},
		{[]string{"add", "alice@example.test", "--password-file", pwFile}, 2, "address of record must be sip:user@domain"},
		{[]string{"add", "sip:al ice@example.test", "--password-file", pwFile}, 2, "address of record"},
		{[]string{"disable", "sip:nobody@example.test"}, 1, "no such user"},
		{[]string{"list", "sip:x@y"}, 2, "give one of --config or --data"},
	} {
		code, _, errOut := run(t, "portcullis", append(append([]string{"user"}, tc.args...), "--config", cfg)...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("user %v: %d %q, want %d %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}
	short := filepath.Join(d.dir, "short")
	write(t, short, "short\n")
	if code, _, errOut := run(t, "portcullis", "user", "passwd", "sip:alice@example.test", "--config", cfg, "--password-file", short); code != 1 || !strings.Contains(errOut, "password must be") {
		t.Fatalf("short password: %d %q", code, errOut)
	}
	if code, _, _ := run(t, "portcullis", "user", "disable", "sip:bob@example.test", "--config", cfg); code != 0 {
		t.Fatal("disable")
	}
	if _, out, _ := run(t, "portcullis", "user", "list", "--config", cfg); !strings.Contains(out, "sip:bob@example.test\tdisabled") {
		t.Fatalf("after disable: %q", out)
	}
	if code, _, _ := run(t, "portcullis", "user", "delete", "sip:bob@example.test", "--config", cfg); code != 0 {
		t.Fatal("delete")
	}
	if _, out, _ := run(t, "portcullis", "user", "list", "--config", cfg); strings.Contains(out, "bob") {
		t.Fatalf("after delete: %q", out)
	}
	// Never the password in the store, only digests.
	for _, f := range []string{"core.db", "core.db-wal"} {
		b, err := os.ReadFile(filepath.Join(d.dir, f))
		if err == nil && (bytes.Contains(b, []byte("correct horse battery")) || bytes.Contains(b, []byte("another long one"))) {
			t.Fatalf("a password in clear in %s", f)
		}
	}
	// The CLI works while the core runs (the store is shared for operators).
	core := start(t, "portcullis-core", "--config", cfg)
	core.waitLog("core listening")
	if code, _, errOut := run(t, "portcullis", "user", "passwd", "sip:alice@example.test", "--config", cfg, "--password-file", pwFile); code != 0 {
		t.Fatalf("passwd while the core runs: %d %s", code, errOut)
	}
}
