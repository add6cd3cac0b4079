// Package logthrottle bounds per-request log lines that anyone outside can
// cause (a refused request, a failed TURN authentication): without a bound
// a flood of bad requests is also a flood of log writes. Each message kind
// gets its own token bucket, so one flood does not silence other kinds; the
// first line let through after a gap says how many were left out. Metrics
// still count every event.
package logthrottle

import (
	"context"
	"log/slog"
	"sync"

	"golang.org/x/time/rate"
)

// Default bounds: 20 lines a second per message kind, bursts of 100.
const (
	DefaultPerSecond = 20
	DefaultBurst     = 100
)

// Logger logs through l, at most perSecond lines a second (burst) for each
// distinct message.
type Logger struct {
	l         *slog.Logger
	perSecond rate.Limit
	burst     int

	mu    sync.Mutex
	kinds map[string]*kind
}

type kind struct {
	lim        *rate.Limiter
	suppressed int
}

// New makes a Logger with the default bounds.
func New(l *slog.Logger) *Logger { return NewLimits(l, DefaultPerSecond, DefaultBurst) }

// NewLimits makes a Logger with the given bounds.
func NewLimits(l *slog.Logger, perSecond float64, burst int) *Logger {
	return &Logger{l: l, perSecond: rate.Limit(perSecond), burst: burst, kinds: map[string]*kind{}}
}

// Info logs msg at Info level, if its bucket allows.
func (t *Logger) Info(msg string, args ...any) { t.log(slog.LevelInfo, msg, args) }

// Warn logs msg at Warn level, if its bucket allows.
func (t *Logger) Warn(msg string, args ...any) { t.log(slog.LevelWarn, msg, args) }

func (t *Logger) log(level slog.Level, msg string, args []any) {
	if !t.l.Enabled(context.Background(), level) {
		return
	}
	t.mu.Lock()
	k := t.kinds[msg]
	if k == nil {
		k = &kind{lim: rate.NewLimiter(t.perSecond, t.burst)}
		t.kinds[msg] = k
	}
	if !k.lim.Allow() {
		k.suppressed++
		t.mu.Unlock()
		return
	}
	n := k.suppressed
	k.suppressed = 0
	t.mu.Unlock()
	if n > 0 {
		args = append(args, "suppressed_before", n)
	}
	t.l.Log(context.Background(), level, msg, args...)
}
