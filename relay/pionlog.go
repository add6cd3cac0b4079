package relay

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/pion/logging"
)

// pionLogs adapts pion's logger to slog. pion logs at Info for events per
// packet, so its Info goes to Debug.
type pionLogs struct{ log *slog.Logger }

func (f pionLogs) NewLogger(scope string) logging.LeveledLogger {
	return pionLogger{f.log.With("pion", scope)}
}

type pionLogger struct{ l *slog.Logger }

func (p pionLogger) Trace(msg string)          {}
func (p pionLogger) Tracef(string, ...any)     {}
func (p pionLogger) Debug(msg string)          { p.l.Debug(msg) }
func (p pionLogger) Debugf(f string, a ...any) { p.debugf(f, a...) }
func (p pionLogger) Info(msg string)           { p.l.Debug(msg) }
func (p pionLogger) Infof(f string, a ...any)  { p.debugf(f, a...) }
func (p pionLogger) Warn(msg string)           { p.l.Warn(msg) }
func (p pionLogger) Warnf(f string, a ...any)  { p.l.Warn(fmt.Sprintf(f, a...)) }
func (p pionLogger) Error(msg string)          { p.l.Warn(msg) }
func (p pionLogger) Errorf(f string, a ...any) { p.l.Warn(fmt.Sprintf(f, a...)) }

// debugf formats only when debug logging is on: pion calls it per packet.
func (p pionLogger) debugf(f string, a ...any) {
	if p.l.Enabled(context.Background(), slog.LevelDebug) {
		p.l.Debug(fmt.Sprintf(f, a...))
	}
}
