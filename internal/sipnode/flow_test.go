package sipnode

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestLoadOrMakeKey(t *testing.T) {
	file := filepath.Join(t.TempDir(), "route.key")
	k1, err := LoadOrMakeKey(file)
	if err != nil || len(k1) != 32 {
		t.Fatalf("made: %d bytes, %v", len(k1), err)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v", fi.Mode(), err)
	}
	k2, err := LoadOrMakeKey(file)
	if err != nil || !bytes.Equal(k1, k2) {
		t.Fatalf("read again: a different key (%v)", err)
	}
	// Tokens made under the key open under the same key read again.
	tok := NewFlowTokensWithKey(k1).Make("127.0.0.1:5061")
	if addr, ok := NewFlowTokensWithKey(k2).Open(tok); !ok || addr != "127.0.0.1:5061" {
		t.Fatalf("token across a reload of the key: %q %v", addr, ok)
	}
	if _, ok := NewFlowTokens().Open(tok); ok {
		t.Fatal("a token opened under another key")
	}
	if err := os.WriteFile(file, []byte("not hex\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrMakeKey(file); err == nil {
		t.Fatal("a damaged key file was accepted")
	}
	if _, err := LoadOrMakeKey(filepath.Join(t.TempDir(), "missing", "route.key")); err == nil {
		t.Fatal("a key made in a folder that does not exist")
	}
}

func TestCheckKeyFile(t *testing.T) {
	dir := t.TempDir()
	if err := CheckKeyFile(filepath.Join(dir, "route.key")); err != nil {
		t.Fatalf("a key to make in a folder that is there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "route.key")); err == nil {
		t.Fatal("the check made the key")
	}
	if err := CheckKeyFile(filepath.Join(dir, "missing", "route.key")); err == nil {
		t.Fatal("a key to make in a folder that is not there")
	}
	if _, err := LoadOrMakeKey(filepath.Join(dir, "route.key")); err != nil {
		t.Fatal(err)
	}
	if err := CheckKeyFile(filepath.Join(dir, "route.key")); err != nil {
		t.Fatalf("a key made: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "route.key"), []byte("abcd\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CheckKeyFile(filepath.Join(dir, "route.key")); err == nil {
		t.Fatal("a short key passed")
	}
}
