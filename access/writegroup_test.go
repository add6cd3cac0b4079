package access

import (
	"net"
	"testing"
)

// A failed write is reported to its writer and leaves the connection
// free (not busy), so later writers are not left waiting.
func TestWriteGroupFailedWriteFreesTheConnection(t *testing.T) {
	a, b := net.Pipe()
	var g writeGroup
	b.Close()
	if _, err := g.write(a, []byte("x")); err == nil {
		t.Fatal("write to a closed pipe succeeded")
	}
	if g.busy {
		t.Fatal("busy after a failed write")
	}
	a.Close()
}
