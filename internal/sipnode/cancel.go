package sipnode

import "sync"

// CancelGate passes a caller's CANCEL of an INVITE on to the next hop only
// once that hop has answered the INVITE provisionally (RFC 3261 §9.1):
// sent earlier, it can overtake the INVITE there (each request is handled
// on its own goroutine), be answered 481, and leave the callee ringing.
// The edge keeps one per INVITE it forwards, the core one per branch of a
// fork.
type CancelGate struct {
	send   func()        // sends the CANCEL on, once
	wanted chan struct{} // closed by the first Want

	mu                   sync.Mutex
	want, answered, sent bool
}

// NewCancelGate makes a gate that calls send (on its own goroutine) when a
// CANCEL is both wanted and allowed.
func NewCancelGate(send func()) *CancelGate {
	return &CancelGate{send: send, wanted: make(chan struct{})}
}

// Want asks for the CANCEL: sent at once if the next hop has answered
// provisionally, else on its first provisional response.
func (g *CancelGate) Want() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.want {
		g.want = true
		close(g.wanted)
		g.sendOnce()
	}
}

// Wanted is closed once Want has been called.
func (g *CancelGate) Wanted() <-chan struct{} { return g.wanted }

// Provisional notes a provisional response from the next hop and says
// whether a CANCEL is wanted (such a response goes no further upstream).
func (g *CancelGate) Provisional() (wanted bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.answered = true
	g.sendOnce()
	return g.want
}

func (g *CancelGate) sendOnce() { // with mu held
	if g.want && g.answered && !g.sent {
		g.sent = true
		go g.send()
	}
}
