package cmd_test

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestMeetingCommands(t *testing.T) {
	d := newDeployment(t)
	cfg := d.coreFile
	pwFile := filepath.Join(d.dir, "pw")
	write(t, pwFile, "correct horse battery\n")
	if code, _, errOut := run(t, "portcullis", "user", "add", "sip:alice@example.test", "--config", cfg, "--password-file", pwFile); code != 0 {
		t.Fatalf("user add: %s", errOut)
	}
	code, out, errOut := run(t, "portcullis", "meeting", "create", "--organizer", "sip:alice@example.test", "--admission", "anonymous", "--lobby",
		"--expires", "2099-12-31", "--subject", "Plans", "--config", cfg)
	uri := regexp.MustCompile(`sip:alice@example.test;gruu;opaque=app:conf:focus:id:([A-Z0-9]{16})`).FindStringSubmatch(out)
	if code != 0 || uri == nil || !regexp.MustCompile(`key \d{8}`).MatchString(out) || !strings.Contains(out, "lobby true") {
		t.Fatalf("create: %d %q %q", code, out, errOut)
	}
	if _, out, _ := run(t, "portcullis", "meeting", "list", "--organizer", "sip:alice@example.test", "--config", cfg); !strings.Contains(out, uri[0]) {
		t.Fatalf("list: %q", out)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"create", "--organizer", "sip:nobody@example.test"}, 2, "not an enabled user"},
		{[]string{"create", "--organizer", "sip:alice@example.test", "--admission", "all"}, 2, "admission must be"},
		{[]string{"create", "--organizer", "sip:alice@example.test", "--expires", "yesterday"}, 2, "expiry"},
		{[]string{"create", "--organizer", "sip:alice@example.test", "--expires", "2001-01-01"}, 2, "in the past"},
		{[]string{"delete", "not a meeting"}, 2, "give one conference URI"},
		{[]string{"delete", "ABCDEFGH12345678"}, 1, "no such meeting"},
	} {
		code, _, errOut := run(t, "portcullis", append(append([]string{"meeting"}, tc.args...), "--config", cfg)...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("meeting %v: %d %q, want %d %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}
	if code, out, errOut := run(t, "portcullis", "meeting", "delete", uri[0], "--config", cfg); code != 0 || !strings.Contains(out, "deleted "+uri[1]) {
		t.Fatalf("delete: %d %q %q", code, out, errOut)
	}
	if _, out, _ := run(t, "portcullis", "meeting", "list", "--config", cfg); strings.TrimSpace(out) != "" {
		t.Fatalf("after delete: %q", out)
	}
}
