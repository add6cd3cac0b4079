package lifecycle

import (
	"context"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"testing"
)

func TestGCPercent(t *testing.T) {
	for _, c := range []struct {
		live uint64
		want int
	}{
		{0, 400},
		{16 << 20, 400},       // a loaded server: the most room
		{64 << 20, 400},       // 256 MiB of room is exactly 400 %
		{128 << 20, 200},      // room stays 256 MiB
		{256 << 20, 100},      // Go's default from here on
		{4 << 30, 100},        // never below it
		{(64 << 20) + 1, 399}, // just over: percentages round down
	} {
		if got := gcPercent(c.live); got != c.want {
			t.Errorf("gcPercent(%d) = %d, want %d", c.live, got, c.want)
		}
	}
}

// Without GOGC the servers' GC percentage follows the live heap; with it,
// the operator's setting stands.
func TestTuneGC(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	orig := debug.SetGCPercent(100)
	defer debug.SetGCPercent(orig)

	t.Setenv("GOGC", "150")
	debug.SetGCPercent(150)
	ctx, cancel := context.WithCancel(context.Background())
	TuneGC(ctx, log)
	cancel()
	if p := debug.SetGCPercent(150); p != 150 {
		t.Fatalf("GC percentage %d with GOGC=150 set", p)
	}
}

func TestTuneGCWithoutGOGC(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	orig := debug.SetGCPercent(100)
	defer debug.SetGCPercent(orig)
	t.Setenv("GOGC", "") // registers the restore
	unsetenv(t, "GOGC")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	TuneGC(ctx, log)
	// The test binary's live heap is a few megabytes: the most room.
	if p := debug.SetGCPercent(100); p != gcMaxPercent {
		t.Fatalf("GC percentage %d, want %d for a small live heap", p, gcMaxPercent)
	}
}

func unsetenv(t *testing.T, k string) {
	t.Helper()
	if err := os.Unsetenv(k); err != nil {
		t.Fatal(err)
	}
}
