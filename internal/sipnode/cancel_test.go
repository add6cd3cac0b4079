package sipnode

import (
	"sync/atomic"
	"testing"
	"time"
)

// A CANCEL goes out once, and only when it is both wanted and the next
// hop has answered provisionally, in either order.
func TestCancelGate(t *testing.T) {
	for _, wantFirst := range []bool{true, false} {
		var sent atomic.Int32
		g := NewCancelGate(func() { sent.Add(1) })
		select {
		case <-g.Wanted():
			t.Fatal("wanted before Want")
		default:
		}
		if wantFirst {
			g.Want()
			time.Sleep(10 * time.Millisecond)
			if sent.Load() != 0 {
				t.Fatal("sent before the next hop answered provisionally")
			}
			if !g.Provisional() {
				t.Fatal("Provisional: not wanted")
			}
		} else {
			if g.Provisional() {
				t.Fatal("Provisional: wanted before Want")
			}
			time.Sleep(10 * time.Millisecond)
			if sent.Load() != 0 {
				t.Fatal("sent before it was wanted")
			}
			g.Want()
		}
		<-g.Wanted()
		g.Want()
		g.Provisional()
		waitFor(t, func() bool { return sent.Load() >= 1 })
		time.Sleep(10 * time.Millisecond)
		if n := sent.Load(); n != 1 {
			t.Fatalf("want first %v: sent %d times", wantFirst, n)
		}
	}
}
