package access

import (
	"net"
	"testing"
)

// sipgo asks a connection for its addresses several times per message:
// answering must not allocate.
func TestTrackedConnAddrsDoNotAllocate(t *testing.T) {
	a := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5061}
	c := &trackedConn{localAddr: &addrString{a, a.String()}, remoteAddr: &addrString{a, a.String()}}
	var sink net.Addr
	if n := testing.AllocsPerRun(100, func() { sink = c.RemoteAddr(); sink = c.LocalAddr() }); n != 0 {
		t.Fatalf("%v allocations per call", n)
	}
	if sink.String() != "127.0.0.1:5061" {
		t.Fatalf("address %q", sink.String())
	}
}
