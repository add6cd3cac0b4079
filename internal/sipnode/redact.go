package sipnode

import (
	"context"
	"log/slog"
)

// redacted drops attributes that carry whole raw packets (sipgo logs a
// message it cannot parse under "data", credentials and all): logs never
// hold raw packets or credentials.
type redacted struct{ slog.Handler }

var rawKeys = map[string]bool{"data": true, "msg_raw": true, "raw": true}

func (h redacted) Handle(ctx context.Context, r slog.Record) error {
	clean := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		if !rawKeys[a.Key] {
			clean.AddAttrs(a)
		}
		return true
	})
	return h.Handler.Handle(ctx, clean)
}

func (h redacted) WithAttrs(as []slog.Attr) slog.Handler {
	var keep []slog.Attr
	for _, a := range as {
		if !rawKeys[a.Key] {
			keep = append(keep, a)
		}
	}
	return redacted{h.Handler.WithAttrs(keep)}
}

func (h redacted) WithGroup(name string) slog.Handler { return redacted{h.Handler.WithGroup(name)} }

// libraryLogger is what sipgo gets to log through.
func libraryLogger(log *slog.Logger) *slog.Logger { return slog.New(redacted{log.Handler()}) }
