package sipnode

import (
	"bytes"
	"net/netip"
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

// A dialog token opens to what it was made with, with this key only, and
// not as another kind of token.
func TestDialogTokens(t *testing.T) {
	f := NewFlowTokensWithKey(bytes.Repeat([]byte{1}, 32))
	d := Dialog{Flow: "198.51.100.7:5061", CallID: "a84b4c76e66710@pc33", Caller: "sip:alice@example.test", Callee: "sip:bob@example.test"}
	tok := f.MakeDialog(d)
	if got, ok := f.OpenDialog(tok); !ok || got != d {
		t.Fatalf("OpenDialog: %+v %v", got, ok)
	}
	if _, ok := NewFlowTokensWithKey(bytes.Repeat([]byte{2}, 32)).OpenDialog(tok); ok {
		t.Fatal("opened with another key")
	}
	if _, ok := f.Open(tok); ok {
		t.Fatal("a dialog token opened as a flow token")
	}
	if _, ok := f.OpenDialog(f.Make(d.Flow)); ok {
		t.Fatal("a flow token opened as a dialog token")
	}
	// A Call-ID cannot pass for the fields after it.
	forged := Dialog{Flow: d.Flow, CallID: "x\nsip:carol@example.test", Caller: d.Caller, Callee: d.Callee}
	if got, ok := f.OpenDialog(f.MakeDialog(forged)); !ok || got != forged {
		t.Fatalf("a Call-ID with a line break: %+v %v", got, ok)
	}
}

// Tokens come back in Route headers from anyone: no input makes opening
// one panic, and a dialog token made of any values (a Call-ID with line
// breaks in it too) opens to exactly them.
func FuzzFlowTokens(f *testing.F) {
	k := NewFlowTokensWithKey(bytes.Repeat([]byte{7}, 32))
	f.Add(k.MakeDialog(Dialog{Flow: "127.0.0.1:5061", CallID: "x", Caller: "sip:a@b", Callee: "sip:c@d"}), "127.0.0.1:5061", "call-id", "sip:a@example.test")
	f.Add(k.MakeRoutes([]string{"sip:x@127.0.0.1:5061;lr"}), "[::1]:5061", "", "")
	f.Add("RGFub3RoZXIgdG9rZW4", "nonsense", "id\nwith newline", "sip:z@y")
	f.Fuzz(func(t *testing.T, tok, flow, callID, aor string) {
		k.Open(tok)
		k.OpenRoutes(tok)
		k.OpenPartner(tok)
		k.OpenDialog(tok)
		d := Dialog{Flow: flow, CallID: callID, Caller: aor, Callee: "sip:bob@example.test"}
		got, ok := k.OpenDialog(k.MakeDialog(d))
		if _, err := netip.ParseAddrPort(flow); (err == nil) != ok || (ok && got != d) {
			t.Fatalf("made %+v, opened %+v %v", d, got, ok)
		}
	})
}
