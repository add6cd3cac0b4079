package sipnode

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestLibraryLogsHoldNoRawPackets(t *testing.T) {
	var b bytes.Buffer
	log := libraryLogger(slog.New(slog.NewJSONHandler(&b, nil)))
	log.With("data", "REGISTER ... Authorization: Digest secret").Error("failed to parse", "error", "bad header", "data", "REGISTER sip:x Authorization: Digest response=abc")
	if strings.Contains(b.String(), "Authorization") || !strings.Contains(b.String(), "bad header") {
		t.Fatalf("log line: %s", b.String())
	}
}
