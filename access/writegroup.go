package access

import (
	"net"
	"sync"
)

// writeGroup joins concurrent writes to one connection (group commit).
// sipgo writes each message from the goroutine that made it, so on a
// connection that carries many transactions at once (an edge's link to the
// core, a busy user agent's) writers queue on the TLS connection's lock,
// and each message costs a TLS record, a system call and a segment, with a
// wake-up of the reader on the far side. Here a writer that finds a write
// under way appends its message to the next batch and waits; the batch
// leaves as one write when the one before it is done, written by the
// goroutine that started it (so no writer writes more than its own message
// and one batch). Every Write returns once its bytes are written, with the
// error of the write that carried them; a writer alone writes at once.
type writeGroup struct {
	mu   sync.Mutex
	busy bool   // a write is under way
	next *batch // what joins while it is: the next write

	batches, joined uint64 // for tests: batches written, messages in them
}

type batch struct {
	buf  []byte
	done chan struct{}
	err  error
	n    int
}

// write writes b to c, alone or in a batch.
func (g *writeGroup) write(c net.Conn, b []byte) (int, error) {
	g.mu.Lock()
	if !g.busy {
		g.busy = true
		g.mu.Unlock()
		n, err := c.Write(b)
		g.flush(c)
		return n, err
	}
	bt := g.next
	first := bt == nil
	if first {
		bt = &batch{buf: make([]byte, 0, 4*len(b)), done: make(chan struct{})}
		g.next = bt
	}
	bt.buf = append(bt.buf, b...)
	bt.n++
	done := bt.done
	g.mu.Unlock()
	<-done
	err := bt.err
	if first {
		g.flush(c) // the batch's starter writes the one that gathered behind it
	}
	if err != nil {
		return 0, err
	}
	return len(b), nil
}

// flush writes the batch gathered during the write that just ended, if
// any; otherwise the connection is free again.
func (g *writeGroup) flush(c net.Conn) {
	g.mu.Lock()
	bt := g.next
	g.next = nil
	if bt == nil {
		g.busy = false
		g.mu.Unlock()
		return
	}
	g.batches++
	g.joined += uint64(bt.n)
	g.mu.Unlock()
	_, bt.err = c.Write(bt.buf)
	close(bt.done)
}
