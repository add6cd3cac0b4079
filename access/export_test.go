package access

import "net"

// WriteStats is an accepted connection's write batching so far: batches
// written, messages they carried, and whether a write is under way.
func WriteStats(c net.Conn) (batches, joined uint64, busy bool) {
	g := &c.(*trackedConn).writes
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.batches, g.joined, g.busy
}
