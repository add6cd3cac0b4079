package lifecycle

import (
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func TestGCPercent(t *testing.T) {
	const mb = 1 << 20
	for _, c := range []struct {
		live, rate uint64
		want       int
	}{
		{0, 0, 100},                // idle
		{10 * mb, 15 * mb, 100},    // TURN allocations being set up: fewer than two collections a second anyway
		{17 * mb, 94 * mb, 276},    // 2,000 calls/s: two collections a second
		{7 * mb, 112 * mb, 400},    // 5,000 MESSAGE/s: capped
		{128 * mb, 2048 * mb, 200}, // room capped at 256 MiB
		{512 * mb, 2048 * mb, 100}, // never below Go's default
		{0, 100 * mb, 400},         // no collection yet: live counted as 1 MiB
	} {
		if got := gcPercent(c.live, c.rate); got != c.want {
			t.Errorf("gcPercent(%d MiB live, %d MiB/s) = %d, want %d", c.live/mb, c.rate/mb, got, c.want)
		}
	}
}

// With GOGC set, the operator's setting stands.
func TestTuneGCLeavesGOGC(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	orig := debug.SetGCPercent(150)
	defer debug.SetGCPercent(orig)
	t.Setenv("GOGC", "150")
	TuneGC(log)()
	if p := debug.SetGCPercent(150); p != 150 {
		t.Fatalf("GC percentage %d with GOGC=150 set", p)
	}
}

// Without GOGC, allocating fast raises the GC percentage above Go's
// default (also again after something else set it back), and stopping
// brings it back.
func TestTuneGCFollowsAllocation(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	orig := debug.SetGCPercent(100)
	defer debug.SetGCPercent(orig)
	t.Setenv("GOGC", "")
	if err := os.Unsetenv("GOGC"); err != nil {
		t.Fatal(err)
	}
	debug.SetGCPercent(123)
	stop := TuneGC(log)

	// Read without setting it: setting it back (SetGCPercent) could undo
	// what the tuner set in between, and the tuner sets only on a change.
	gogc := []metrics.Sample{{Name: gogcPercent}}
	percent := func() int { metrics.Read(gogc); return int(gogc[0].Value.Uint64()) }
	waitFor := func(what string, ok func(int) bool, work func()) {
		t.Helper()
		for deadline := time.Now().Add(5 * gcTunePeriod); !ok(percent()); {
			if time.Now().After(deadline) {
				t.Fatalf("GC percentage %d: not %s", percent(), what)
			}
			work()
		}
	}
	var sink [][]byte
	allocate := func() {
		for range 2000 { // 64 MiB in small pieces, kept briefly
			sink = append(sink, make([]byte, 32<<10))
			if len(sink) > 64 {
				sink = sink[:0]
			}
		}
	}
	waitFor("raised while allocating", func(p int) bool { return p > gcMinPercent }, allocate)
	// Set back by something else in the process: the tuner notices on its
	// next tick.
	debug.SetGCPercent(gcMinPercent)
	waitFor("raised again after it was reset", func(p int) bool { return p > gcMinPercent }, allocate)
	waitFor("back to the default when idle", func(p int) bool { return p == gcMinPercent }, func() { time.Sleep(100 * time.Millisecond) })
	_ = sink
	stop()
	if p := percent(); p != 123 {
		t.Fatalf("GC percentage %d after stop, want the 123 it found", p)
	}
}
