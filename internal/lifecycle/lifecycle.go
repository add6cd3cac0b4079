// Package lifecycle is the process life shared by both servers: JSON logs
// with a reloadable level, and the signal protocol — SIGHUP reloads, the first
// SIGTERM (or SIGINT) drains, a second one forces.
package lifecycle

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"portcullis/internal/config"
)

// LogConfig is the `log` section.
type LogConfig struct {
	Level string `yaml:"level"`
}

// Validate checks the level name.
func (c *LogConfig) Validate(v *config.V) {
	if _, err := ParseLevel(c.Level); err != nil {
		v.Errorf("level", "%v", err)
	}
}

// ParseLevel maps debug|info|warn|error to a slog level.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	switch strings.ToLower(s) {
	case "debug", "info", "warn", "error":
		err := l.UnmarshalText([]byte(s))
		return l, err
	}
	return l, errors.New("must be one of debug, info, warn, error")
}

// ShutdownConfig is the `shutdown` section.
type ShutdownConfig struct {
	// DrainTimeout bounds how long the first SIGTERM waits for work to end.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
}

// Validate checks the deadline.
func (c *ShutdownConfig) Validate(v *config.V) {
	v.Check(c.DrainTimeout > 0 && c.DrainTimeout <= time.Hour, "drain_timeout", "must be between 0s and 1h, got %s", c.DrainTimeout)
}

// NewLogger returns a JSON logger whose level follows level.
func NewLogger(w io.Writer, level *slog.LevelVar) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}))
}

// Service is a started server.
type Service interface {
	// Drain stops accepting new work and returns when in-flight work has
	// ended or ctx is done.
	Drain(ctx context.Context) error
	// Close stops everything now.
	Close() error
}

// Options configures Run.
type Options struct {
	Log *slog.Logger
	// DrainTimeout is read when draining starts (it may have been reloaded).
	DrainTimeout func() time.Duration
	// Reload re-reads and applies the configuration; an error leaves the
	// running configuration in place. Nil disables SIGHUP.
	Reload func() error
	// Signals overrides the process signals (tests).
	Signals <-chan os.Signal
}

// Run serves until ctx ends or a stop signal arrives, then drains svc and
// closes it. A second stop signal while draining forces the close.
func Run(ctx context.Context, opt Options, svc Service) error {
	sigs := opt.Signals
	if sigs == nil {
		ch := make(chan os.Signal, 4)
		signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
		defer signal.Stop(ch)
		sigs = ch
	}
	log := opt.Log
	defer TuneGC(log)()
	for {
		select {
		case <-ctx.Done():
			log.Info("stopping", "why", "context ended")
			return drain(opt, svc, sigs)
		case s := <-sigs:
			if s == syscall.SIGHUP {
				reload(opt)
				continue
			}
			log.Info("stopping", "why", "signal", "signal", s.String())
			return drain(opt, svc, sigs)
		}
	}
}

func reload(opt Options) {
	if opt.Reload == nil {
		opt.Log.Warn("SIGHUP ignored: reload not supported here")
		return
	}
	if err := opt.Reload(); err != nil {
		opt.Log.Error("config reload rejected; keeping the running config", "error", err)
		return
	}
	opt.Log.Info("config reloaded")
}

func drain(opt Options, svc Service, sigs <-chan os.Signal) error {
	timeout := opt.DrainTimeout()
	opt.Log.Info("draining", "deadline", timeout.String())
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- svc.Drain(ctx) }()
	for {
		select {
		case err := <-done:
			if err != nil {
				opt.Log.Warn("drain ended early", "error", err)
			} else {
				opt.Log.Info("drained")
			}
			return svc.Close()
		case s := <-sigs:
			if s == syscall.SIGHUP {
				opt.Log.Warn("SIGHUP ignored while draining")
				continue
			}
			opt.Log.Warn("second stop signal: forcing shutdown", "signal", s.String())
			cancel()
			err := svc.Close()
			<-done
			return err
		}
	}
}

// Group runs several services as one: they drain in order (list the
// internet-facing one first) and close in reverse order.
type Group []Service

// Drain drains each service in turn within the one deadline.
func (g Group) Drain(ctx context.Context) error {
	var errs []error
	for _, s := range g {
		errs = append(errs, s.Drain(ctx))
	}
	return errors.Join(errs...)
}

// Close closes every service, last first.
func (g Group) Close() error {
	var errs []error
	for i := len(g) - 1; i >= 0; i-- {
		errs = append(errs, g[i].Close())
	}
	return errors.Join(errs...)
}

// Every calls f with the tick's time every d until ctx ends (in the
// caller's goroutine).
func Every(ctx context.Context, d time.Duration, f func(now time.Time)) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			f(now)
		}
	}
}
