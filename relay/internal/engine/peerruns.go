package engine

import (
	"errors"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// peerRuns gathers the ChannelData of one listen batch by binding, so that
// a client's datagrams to one peer leave the relay socket as runs (one
// message with UDP_SEGMENT, as mmsg.coalesce does toward clients) instead
// of one sendto each. A client that sends several datagrams between two
// reads of the loop (media bursts; the load tool's window) has them side by
// side in a batch. Order is kept per binding: a run holds datagrams of one
// size, and a shorter one ends it (the kernel's rule for segments).
type peerRuns struct {
	runs [batchLen]peerRun
	nr   int
	// The datagrams of the batch in arrival order: payloads, and the next
	// one of the same run (-1: none).
	payload [batchLen][]byte
	next    [batchLen]int8
	iovs    [batchLen]unix.Iovec
	ctl     [gsoCmsgLen]byte
	sa      unix.RawSockaddrInet6
}

type peerRun struct {
	b           *bound
	size        int
	first, last int8
	n           int
	closed      bool // a shorter datagram ended it
}

// add puts datagram i (payload p, for binding b) in its run.
func (r *peerRuns) add(i int, b *bound, p []byte) {
	r.payload[i] = p
	r.next[i] = -1
	for k := r.nr - 1; k >= 0; k-- {
		run := &r.runs[k]
		if run.b != b {
			continue
		}
		if run.closed || len(p) > run.size {
			break // a new run, sent after this one
		}
		r.next[run.last] = int8(i)
		run.last = int8(i)
		run.n++
		run.closed = len(p) < run.size
		return
	}
	r.runs[r.nr] = peerRun{b: b, size: len(p), first: int8(i), last: int8(i), n: 1}
	r.nr++
}

// flush sends every run, in the order the runs began.
func (r *peerRuns) flush(e *Engine) {
	gso := !e.gsoOff.Load()
	for k := range r.nr {
		run := &r.runs[k]
		if run.n == 1 || !gso {
			for i := int(run.first); i >= 0; i = int(r.next[i]) {
				run.b.alloc.sendToPeer(r.payload[i], run.b)
			}
		} else {
			r.send(e, run)
		}
		run.b = nil
	}
	r.nr = 0
	clear(r.payload[:])
}

// send writes a run as one message; one the kernel refuses goes datagram
// by datagram (as mmsg.send does).
func (r *peerRuns) send(e *Engine, run *peerRun) {
	s := run.b.alloc.s
	n := 0
	for i := int(run.first); i >= 0; i = int(r.next[i]) {
		p := r.payload[i]
		r.iovs[n].Base = &p[0]
		r.iovs[n].SetLen(len(p))
		n++
	}
	var msg unix.Msghdr
	msg.Name = (*byte)(unsafe.Pointer(&r.sa))
	msg.Namelen = putSockaddr(&r.sa, run.b.peer, s.v6)
	msg.Iov = &r.iovs[0]
	msg.SetIovlen(n)
	msg.Control = &r.ctl[0]
	msg.SetControllen(putSegment(&r.ctl, run.size))

	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return
	}
	var errno syscall.Errno
	for errno = unix.EINTR; errno == unix.EINTR; {
		_, _, errno = syscall.RawSyscall(unix.SYS_SENDMSG, uintptr(s.tx), uintptr(unsafe.Pointer(&msg)), 0)
	}
	s.mu.RUnlock()
	switch errno {
	case 0:
	case unix.EAGAIN:
		for i := int(run.first); i >= 0; i = int(r.next[i]) {
			e.cfg.Events.Drop(DropOverload, len(r.payload[i]))
		}
	default:
		e.runRefused(errno)
		for i := int(run.first); i >= 0; i = int(r.next[i]) {
			run.b.alloc.sendToPeer(r.payload[i], run.b)
		}
	}
}

// sendToPeer writes one datagram of a client's to a peer; a full socket
// buffer or a refusal drops it, counted.
func (a *Alloc) sendToPeer(p []byte, b *bound) {
	if err := a.s.send(p, b.peer); err != nil && !errors.Is(err, errSockClosed) {
		a.e.cfg.Events.Drop(DropOverload, len(p))
	}
}
