package store_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"portcullis/core/store"
)

// The server's store caches users and bindings; its own writes show at
// once, and an operator command's writes through a second, shared handle on
// the same file show within the cache's check interval.
func TestCacheCoherence(t *testing.T) {
	ctx := context.Background()
	cfg := store.Config{Driver: "sqlite", Path: filepath.Join(t.TempDir(), "core.db")}
	srv, err := store.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	op, err := store.OpenShared(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()

	const aor = "sip:alice@example.test"
	if _, err := srv.UserByAOR(ctx, aor); !errors.Is(err, store.ErrNoUser) {
		t.Fatalf("before add: %v", err)
	}
	if err := op.AddUser(ctx, store.User{AOR: aor, Username: "alice", Realm: "example.test", HA1MD5: "m1", HA1SHA256: "s1"}); err != nil {
		t.Fatal(err)
	}
	// An unknown user is not cached: the new user is seen at once.
	u, err := srv.UserByDigest(ctx, "alice", "example.test")
	if err != nil || u.HA1MD5 != "m1" {
		t.Fatalf("after add: %+v %v", u, err)
	}

	now := time.Now()
	b := store.Binding{AOR: aor, Contact: "sip:alice@192.0.2.1:5061;transport=tls", CallID: "c1", CSeq: 1, Expires: now.Add(time.Hour)}
	if bs, err := srv.Bindings(ctx, aor, now); err != nil || len(bs) != 0 {
		t.Fatalf("bindings before register: %v %v", bs, err)
	}
	if err := srv.PutBinding(ctx, b); err != nil {
		t.Fatal(err)
	}
	gone := b
	gone.Contact, gone.Expires = "sip:alice@192.0.2.2:5061;transport=tls", now.Add(time.Second)
	if err := srv.PutBinding(ctx, gone); err != nil {
		t.Fatal(err)
	}
	if bs, _ := srv.Bindings(ctx, aor, now); len(bs) != 2 {
		t.Fatalf("own write not seen: %v", bs)
	}
	// Expiry is applied to cached bindings.
	if bs, _ := srv.Bindings(ctx, aor, now.Add(2*time.Second)); len(bs) != 1 || bs[0].Contact != b.Contact {
		t.Fatalf("expired binding served from cache: %v", bs)
	}
	// A caller changing the slice it got does not change the cache.
	bs, _ := srv.Bindings(ctx, aor, now)
	bs[0].Contact = "sip:mallory@203.0.113.9"
	if bs, _ := srv.Bindings(ctx, aor, now); bs[0].Contact == "sip:mallory@203.0.113.9" {
		t.Fatal("cache shares its slice with callers")
	}
	if err := srv.DeleteBinding(ctx, aor, b.Contact); err != nil {
		t.Fatal(err)
	}
	if bs, _ := srv.Bindings(ctx, aor, now); len(bs) != 1 {
		t.Fatalf("own delete not seen: %v", bs)
	}

	// The operator disables the user and changes the password from another
	// handle: the server sees both, and the bindings are gone.
	if err := op.SetHA1(ctx, aor, "m2", "s2"); err != nil {
		t.Fatal(err)
	}
	if err := op.SetDisabled(ctx, aor, true); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		u, _ := srv.UserByAOR(ctx, aor)
		d, _ := srv.UserByDigest(ctx, "alice", "example.test")
		bs, _ := srv.Bindings(ctx, aor, now)
		if u.Disabled && d.HA1MD5 == "m2" && len(bs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("operator's change not seen: %+v %+v %v", u, d, bs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := op.DeleteUser(ctx, aor); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := srv.UserByAOR(ctx, aor); errors.Is(err, store.ErrNoUser) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("operator's delete not seen")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
