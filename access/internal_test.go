package access

import (
	"fmt"
	"net"
	"testing"
	"time"
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

// Remembered nonce counts are swept for expired nonces only when their
// number has doubled since the last sweep: with many live nonces, a sweep
// on every authentication would scan them all under the lock each time.
func TestDigestNonceSweepAmortised(t *testing.T) {
	d := NewDigest(map[string][]string{"example.test": {"MD5"}}, time.Minute)
	now := time.Now()
	live := now.Add(time.Minute)
	for i := range 10000 {
		if err := d.remember(fmt.Sprint("live", i), 1, live, now); err != nil {
			t.Fatal(err)
		}
	}
	// Sweeps at 4096 and 8192 entries, none expired: the next is at 16384.
	if d.sweepAt != 16384 || len(d.ncs) != 10000 {
		t.Fatalf("after 10000 live nonces: next sweep at %d, %d remembered", d.sweepAt, len(d.ncs))
	}
	if err := d.remember("live7", 1, live, now); err != ErrDigestReplay {
		t.Fatalf("replayed nonce count: %v", err)
	}

	// Once they have expired, the next sweep drops them.
	later := now.Add(2 * time.Minute)
	for i := range 6400 {
		if err := d.remember(fmt.Sprint("new", i), 1, later.Add(time.Minute), later); err != nil {
			t.Fatal(err)
		}
	}
	if len(d.ncs) > 6400 {
		t.Fatalf("%d nonces remembered after the old 10000 expired (want at most 6400)", len(d.ncs))
	}
}
