// Package testlog holds the log sinks the tests share: a buffer that
// goroutines may write while a test reads it, and a writer into t.Log.
package testlog

import (
	"strings"
	"sync"
	"testing"
)

// Buffer is an io.Writer safe for concurrent writes and reads.
type Buffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String is everything written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Writer sends each write to t.Log (shown when the test fails or with -v),
// prefixed with name when it is not empty.
func Writer(t testing.TB, name string) *TestWriter { return &TestWriter{t: t, name: name} }

// TestWriter is the io.Writer Writer returns.
type TestWriter struct {
	t    testing.TB
	name string
}

func (w *TestWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	if w.name != "" {
		line = w.name + ": " + line
	}
	w.t.Log(line)
	return len(p), nil
}
