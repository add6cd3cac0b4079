package logthrottle

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestThrottle(t *testing.T) {
	var buf bytes.Buffer
	l := NewLimits(slog.New(slog.NewTextHandler(&buf, nil)), 10, 5)
	for i := 0; i < 50; i++ {
		l.Info("request refused", "i", i)
	}
	l.Warn("other kind") // its own bucket
	if n := strings.Count(buf.String(), "request refused"); n < 5 || n > 6 {
		t.Fatalf("%d lines of a flood of 50 with a burst of 5:\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), "other kind") {
		t.Fatal("a flood of one kind silenced another")
	}
	time.Sleep(150 * time.Millisecond) // one token back
	buf.Reset()
	l.Info("request refused", "i", 99)
	if !strings.Contains(buf.String(), "suppressed_before=") {
		t.Fatalf("the line after a gap does not say how many were left out: %s", buf.String())
	}
}
