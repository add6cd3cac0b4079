package siptest

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Pipe forwards TCP connections to a target. Hold stops what the target
// sends toward the pipe's clients until Release: a slow path toward a
// phone, so that what a server sends it (a CANCEL) arrives late. Cut closes
// every connection: a network blip (both ends see their connection end,
// and the client's next one comes from a new port).
type Pipe struct {
	ln     net.Listener
	target string
	gate   atomic.Pointer[chan struct{}] // open while held
	mu     sync.Mutex
	conns  []net.Conn
}

// NewPipe listens on loopback and forwards each connection to target.
func NewPipe(t testing.TB, target string) *Pipe {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Pipe{ln: ln, target: target}
	t.Cleanup(p.Close)
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := (&net.Dialer{Control: reuseAddr}).Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, in, out)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(out, in); out.Close() }()
			go func() { p.toClient(in, out); in.Close() }()
		}
	}()
	return p
}

// Addr is where clients connect.
func (p *Pipe) Addr() string { return p.ln.Addr().String() }

// toClient copies what the target sends, waiting while the pipe is held.
func (p *Pipe) toClient(in, out net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := out.Read(buf)
		if n > 0 {
			if g := p.gate.Load(); g != nil {
				<-*g
			}
			if _, werr := in.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Hold keeps what the target sends from here on until Release (held
// already: nothing changes).
func (p *Pipe) Hold() {
	g := make(chan struct{})
	p.gate.CompareAndSwap(nil, &g)
}

// Release lets what was held through, and what follows.
func (p *Pipe) Release() {
	if g := p.gate.Swap(nil); g != nil {
		close(*g)
	}
}

// Outbound is the local address of the last connection the pipe made to
// its target ("" before any): where the target sees a client come from.
func (p *Pipe) Outbound() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.conns) == 0 {
		return ""
	}
	return p.conns[len(p.conns)-1].LocalAddr().String()
}

// Cut closes every connection made so far.
func (p *Pipe) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// Close stops the pipe: no new connection, and every one made is cut (a
// client behind it can no longer reach the target).
func (p *Pipe) Close() {
	p.ln.Close()
	p.Release()
	p.Cut()
}
