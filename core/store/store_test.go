package store_test

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"

	"portcullis/core/store"
)

func TestMigrationsAndExclusiveOpen(t *testing.T) {
	ctx := context.Background()
	cfg := store.Config{Driver: "sqlite", Path: filepath.Join(t.TempDir(), "core.db")}
	s, err := store.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	v, err := s.SchemaVersion(ctx)
	if err != nil || v < 1 {
		t.Fatalf("schema version %d %v", v, err)
	}
	id, err := s.DeploymentID(ctx)
	if err != nil || len(id) != 16 {
		t.Fatalf("deployment id %q %v", id, err)
	}
	key, err := s.RouteKey(ctx)
	if err != nil || len(key) != 32 {
		t.Fatalf("route key of %d bytes, %v", len(key), err)
	}
	if _, err := store.Open(ctx, cfg); !errors.Is(err, store.ErrInUse) {
		t.Fatalf("second open: %v, want ErrInUse", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Reopening runs no migration twice and keeps the data.
	s, err = store.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v2, _ := s.SchemaVersion(ctx)
	id2, _ := s.DeploymentID(ctx)
	if v2 != v || id2 != id {
		t.Fatalf("after reopen: version %d→%d id %s→%s", v, v2, id, id2)
	}
	if key2, err := s.RouteKey(ctx); err != nil || !bytes.Equal(key2, key) {
		t.Fatalf("the route key changed on reopen (%v)", err)
	}
}
