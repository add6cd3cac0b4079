package lifecycle_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"portcullis/internal/lifecycle"
)

// stuck is a service whose work never ends by itself.
type stuck struct {
	draining, closed atomic.Bool
	release          chan struct{}
}

func (s *stuck) Drain(ctx context.Context) error {
	s.draining.Store(true)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-s.release:
		return nil
	}
}

func (s *stuck) Close() error {
	s.closed.Store(true)
	return nil
}

func opts(sigs chan os.Signal, drain time.Duration, reload func() error) lifecycle.Options {
	return lifecycle.Options{
		Log:          slog.New(slog.DiscardHandler),
		DrainTimeout: func() time.Duration { return drain },
		Reload:       reload,
		Signals:      sigs,
	}
}

func TestSecondStopSignalForces(t *testing.T) {
	sigs := make(chan os.Signal, 2)
	s := &stuck{release: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- lifecycle.Run(context.Background(), opts(sigs, time.Hour, nil), s) }()
	sigs <- syscall.SIGTERM
	for !s.draining.Load() {
		time.Sleep(time.Millisecond)
	}
	if s.closed.Load() {
		t.Fatal("closed before the second signal")
	}
	sigs <- syscall.SIGTERM
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("second SIGTERM did not force")
	}
	if !s.closed.Load() {
		t.Fatal("not closed")
	}
}

func TestDrainDeadlineThenClose(t *testing.T) {
	sigs := make(chan os.Signal, 1)
	s := &stuck{release: make(chan struct{})}
	sigs <- syscall.SIGTERM
	start := time.Now()
	if err := lifecycle.Run(context.Background(), opts(sigs, 100*time.Millisecond, nil), s); err != nil {
		t.Fatal(err)
	}
	if !s.closed.Load() || time.Since(start) < 100*time.Millisecond {
		t.Fatal("did not wait for the drain deadline before closing")
	}
}

func TestReloadErrorsKeepRunning(t *testing.T) {
	sigs := make(chan os.Signal, 4)
	var calls atomic.Int32
	reload := func() error {
		if calls.Add(1) == 1 {
			return errors.New("bad file")
		}
		return nil
	}
	s := &stuck{release: make(chan struct{})}
	close(s.release)
	sigs <- syscall.SIGHUP
	sigs <- syscall.SIGHUP
	sigs <- syscall.SIGTERM
	if err := lifecycle.Run(context.Background(), opts(sigs, time.Second, reload), s); err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 2 || !s.closed.Load() {
		t.Fatalf("reload calls %d, closed %v", calls.Load(), s.closed.Load())
	}
}
