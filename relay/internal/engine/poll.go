package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The UDP data plane is coturn's shape: a few loops, each blocking in
// epoll_wait (level-triggered) over non-blocking socket descriptors the
// engine owns, instead of one goroutine per socket parked in Go's netpoller.
// A relay socket that became readable is read once per event; nothing reads
// until EAGAIN just to learn that it is drained, and no goroutine is woken
// per datagram.

// sock is a non-blocking UDP socket owned by the engine. Its descriptor is
// polled by one of the engine's loops, never by Go's netpoller.
type sock struct {
	fd    int  // polled and read
	tx    int  // written: fd, or its send twin (sendTwin)
	v6    bool // AF_INET6 (IPv4 destinations are sent as mapped addresses)
	local netip.AddrPort

	mu     sync.RWMutex // I/O holds it shared; close holds it exclusively
	closed bool

	// What readability means: exactly one is set.
	group *Group
	alloc *Alloc
	loop  *loop
}

var errSockClosed = errors.New("relay socket closed")

// openUDP makes a non-blocking UDP socket bound to addr (port 0: any). A
// listen socket (reuse: SO_REUSEPORT, shared by the loops) gets a send
// twin (see sendTwin); a relay socket sends for itself. IPv4 datagrams
// leave with DF set (IP_PMTUDISC_PROBE, as media stacks do: no ID
// generation, no local MTU errors).
func openUDP(addr netip.AddrPort, reuse bool, bufBytes int) (*sock, error) {
	v6 := addr.Addr().Is6() && !addr.Addr().Is4In6()
	fd, local, err := bindUDP(addr, v6, reuse, bufBytes)
	if err != nil {
		return nil, err
	}
	s := &sock{fd: fd, tx: fd, v6: v6, local: local}
	if reuse {
		s.tx = sendTwin(fd, local, v6, bufBytes)
	}
	return s, nil
}

// bindUDP makes and binds one non-blocking UDP socket.
func bindUDP(addr netip.AddrPort, v6, reuse bool, bufBytes int) (int, netip.AddrPort, error) {
	domain := unix.AF_INET
	if v6 {
		domain = unix.AF_INET6
	}
	fd, err := unix.Socket(domain, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return -1, addr, fmt.Errorf("socket: %w", err)
	}
	fail := func(what string, err error) (int, netip.AddrPort, error) {
		unix.Close(fd)
		return -1, addr, fmt.Errorf("%s %s: %w", what, addr, err)
	}
	if reuse {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fail("SO_REUSEPORT", err)
		}
	}
	if bufBytes > 0 {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, bufBytes)
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, bufBytes)
	}
	if v6 {
		// A wildcard IPv6 address serves both families, as Go's "udp" does.
		only := 1
		if addr.Addr().IsUnspecified() {
			only = 0
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, only); err != nil {
			return fail("IPV6_V6ONLY", err)
		}
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_PROBE)
	if err := unix.Bind(fd, sockaddr(addr, v6)); err != nil {
		return fail("bind", err)
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		return fail("getsockname", err)
	}
	var local netip.AddrPort
	switch g := got.(type) {
	case *unix.SockaddrInet4:
		local = netip.AddrPortFrom(netip.AddrFrom4(g.Addr), uint16(g.Port))
	case *unix.SockaddrInet6:
		local = netip.AddrPortFrom(netip.AddrFrom16(g.Addr), uint16(g.Port))
	}
	return fd, local, nil
}

func sockaddr(addr netip.AddrPort, v6 bool) unix.Sockaddr {
	if v6 {
		return &unix.SockaddrInet6{Port: int(addr.Port()), Addr: addr.Addr().As16()}
	}
	return &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().Unmap().As4()}
}

// sendTwin makes the descriptor a listen socket's datagrams leave from: a
// second socket on the same address and port (SO_REUSEPORT, as the listen
// sockets) that is never polled. A polled socket has epoll's entry on its
// wait queue, so the kernel walks that queue (a lock, with interrupts off)
// for every datagram it frees after sending; the twin's queue is empty
// (about 5 % less CPU per sendto on this kind of machine; see
// bench/turn/README.md). The twin is connected to its own address so that
// nothing else is delivered to it (the kernel prefers a connected socket
// only for datagrams from the address it is connected to, and leaves it out
// of SO_REUSEPORT's spreading; sendto with a destination still works).
// Relay sockets get none: a second socket and its port group would cost
// about 3 KB of kernel memory per allocation. A wildcard address (no
// single source to connect to), or any failure, leaves sending on the
// polled socket itself.
func sendTwin(fd int, local netip.AddrPort, v6 bool, bufBytes int) int {
	if local.Addr().IsUnspecified() {
		return fd
	}
	tx, _, err := bindUDP(local, v6, true, bufBytes)
	if err != nil {
		return fd
	}
	// Nothing is ever read from it: keep its receive queue at the minimum.
	_ = unix.SetsockoptInt(tx, unix.SOL_SOCKET, unix.SO_RCVBUF, 0)
	if err := unix.Connect(tx, sockaddr(local, v6)); err != nil {
		unix.Close(tx)
		return fd
	}
	return tx
}

// send writes one datagram to dst; a full socket buffer drops it (UDP: the
// relay never blocks on a slow receiver).
func (s *sock) send(b []byte, dst netip.AddrPort) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return errSockClosed
	}
	if errno := sendto(s.tx, b, dst, s.v6); errno != 0 {
		return errno
	}
	return nil
}

// close stops polling the descriptor and closes it; I/O under way finishes
// first, and none starts after.
func (s *sock) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.loop != nil {
		s.loop.remove(s)
	}
	if s.tx != s.fd {
		unix.Close(s.tx)
	}
	return unix.Close(s.fd)
}

// sendto is sendto(2) without allocation: the address is built on the stack.
// The socket is non-blocking, so the raw form (no scheduler hand-off) is safe.
func sendto(fd int, b []byte, dst netip.AddrPort, v6 bool) syscall.Errno {
	if len(b) == 0 {
		return 0
	}
	var sa unix.RawSockaddrInet6
	size := putSockaddr(&sa, dst, v6)
	_, _, errno := syscall.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0,
		uintptr(unsafe.Pointer(&sa)), uintptr(size))
	return errno
}

// putPort stores a port in network byte order.
func putPort(p *uint16, port uint16) {
	b := (*[2]byte)(unsafe.Pointer(p))
	b[0], b[1] = byte(port>>8), byte(port)
}

// epollPoll takes ready events without waiting: epoll_pwait(2) with a zero
// timeout never blocks, so the raw form keeps the scheduler out of it (a
// system call the scheduler sees can have its P handed away when the
// thread is preempted in it, and sysmon then keeps polling fast).
func epollPoll(epfd int, events []unix.EpollEvent) int {
	n, _, errno := syscall.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if errno != 0 {
		return 0
	}
	return int(n)
}

// recvfrom is recvfrom(2) into b without allocation; the source comes back
// normalised (IPv4-mapped addresses as IPv4).
func recvfrom(fd int, b []byte, sa *unix.RawSockaddrInet6) (int, netip.AddrPort, syscall.Errno) {
	l := uint32(unix.SizeofSockaddrInet6)
	n, _, errno := syscall.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0,
		uintptr(unsafe.Pointer(sa)), uintptr(unsafe.Pointer(&l)))
	if errno != 0 {
		return 0, netip.AddrPort{}, errno
	}
	return int(n), addrFrom(sa), 0
}

// loop is one epoll loop over its share of the engine's sockets. Its epoll
// descriptor is itself parked in Go's netpoller: the goroutine sleeps like
// any other (no thread blocked in a system call, which would make the
// scheduler hand its P around), and once woken it takes every ready event
// with epoll_wait(0) until there are none.
//
// A busy loop is watched through a gate instead. An epoll descriptor
// watched by another signals it on every event added to it, and the
// netpoller's registrations are edge-triggered: watched directly, every
// datagram that arrives while the loop runs wakes the thread parked in the
// netpoller, which finds no goroutine waiting, takes an idle P, finds no
// work and sleeps again (8,700 times a second against 1,600 parks, in an
// execution trace at full load). The gate is a second epoll descriptor
// holding the loop's one-shot: the woken loop takes the gate's event (which
// is what disarms a one-shot registration) and arms it again only when it
// is about to park. The gate costs two system calls per wake-up and a
// level of nesting per event, more than it saves at light load, so a loop
// switches to it after busyRounds rounds in a row with busyEvents ready at
// once, and back after quietRounds rounds with fewer than quietEvents ready
// and no busy round between them (rounds in between count for neither). (Always gated: +14 % at
// full load, −3 % at offered load; switching: +10 %, and +2 to +3 %.)
type loop struct {
	e     *Engine
	index int
	epfd  int // the sockets
	gate  int // holds epfd one-shot while gated, else nothing

	// What Go's netpoller watches: a duplicate of epfd, or the gate.
	mu       sync.RWMutex
	file     *os.File
	gateFile *os.File
	socks    map[int32]*sock
	stopped  bool // the loop has ended or is ending (epfd is closed after it)

	// The loop goroutine's own.
	gated, armed, flip bool
	busy, quiet        int // busy rounds in a row (direct), quiet ones (gated)
	toggles            atomic.Uint64
	gev                [1]unix.EpollEvent

	buf  *[bufLen]byte         // a peer datagram for pion
	sa   unix.RawSockaddrInet6 // its source
	in   *mmsg                 // datagrams read from a listen socket
	outs []*mmsg               // ChannelData for clients, one batch per listen group
	// ChannelData from clients, by binding, while a listen batch is read.
	toPeers peerRuns
}

// poller is the engine's set of loops.
type poller struct {
	loops []*loop
	next  atomic.Uint32
	wg    sync.WaitGroup
	once  sync.Once
}

func newPoller(e *Engine, n int) (*poller, error) {
	p := &poller{}
	for i := range n {
		l, err := newLoop(e, i)
		if err != nil {
			p.stop()
			return nil, err
		}
		p.loops = append(p.loops, l)
	}
	for _, l := range p.loops {
		p.wg.Add(1)
		go l.run(&p.wg)
	}
	return p, nil
}

func newLoop(e *Engine, index int) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	gate, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	l := &loop{e: e, index: index, epfd: epfd, gate: gate, socks: map[int32]*sock{},
		buf: new([bufLen]byte), in: newMmsg(e, nil)}
	err = unix.SetNonblock(epfd, true) // shared by its duplicates
	if err == nil {
		err = unix.SetNonblock(gate, true)
	}
	if err == nil {
		l.file, err = l.direct()
	}
	if err != nil {
		unix.Close(gate)
		unix.Close(epfd)
		return nil, fmt.Errorf("epoll descriptor: %w", err)
	}
	// A non-blocking descriptor makes a pollable *os.File.
	l.gateFile = os.NewFile(uintptr(gate), "relay-epoll-gate")
	return l, nil
}

// direct is a pollable duplicate of epfd for Go's netpoller (closing it
// leaves epfd open).
func (l *loop) direct() (*os.File, error) {
	fd, err := unix.FcntlInt(uintptr(l.epfd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "relay-epoll"), nil
}

// When a loop switches between watching epfd directly and through the
// gate (variables so that a test can make it switch all the time).
var (
	busyEvents  = 32  // ready at once: a busy round
	busyRounds  = 16  // in a row: watch through the gate
	quietEvents = 4   // fewer in a round, while gated: a quiet round
	quietRounds = 256 // with no busy round between: watch epfd directly again
)

// gateCtl adds epfd to the gate (op EPOLL_CTL_ADD) or re-arms it
// (EPOLL_CTL_MOD), one-shot; either queues the event at once when one is
// already there.
func (l *loop) gateCtl(op int) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLONESHOT, Fd: int32(l.epfd)}
	return unix.EpollCtl(l.gate, op, l.epfd, &ev)
}

// arm lets the gate signal the loop's next event once.
func (l *loop) arm() {
	if l.gateCtl(unix.EPOLL_CTL_MOD) == nil {
		l.armed = true
	}
}

// disarm takes the gate's event, if it signalled: a one-shot registration
// is disabled when its event is taken, not when it fires.
func (l *loop) disarm() {
	if epollPoll(l.gate, l.gev[:]) > 0 {
		l.armed = false
	}
}

// toggle switches between watching epfd directly and through the gate
// (run calls it between reads, never inside one). A failure leaves the
// loop as it was.
func (l *loop) toggle() {
	if !l.gated {
		err := l.gateCtl(unix.EPOLL_CTL_ADD)
		if errors.Is(err, unix.EEXIST) { // a removal that failed earlier
			err = l.gateCtl(unix.EPOLL_CTL_MOD)
		}
		if err != nil {
			return
		}
		l.mu.Lock()
		old := l.file
		l.file = nil
		l.mu.Unlock()
		if old != nil {
			_ = old.Close() // the netpoller stops watching epfd
		}
		l.gated, l.armed, l.quiet, l.busy = true, true, 0, 0
		l.toggles.Add(1)
		return
	}
	f, err := l.direct()
	if err != nil {
		return
	}
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		_ = f.Close()
		return
	}
	l.file = f
	l.mu.Unlock()
	_ = unix.EpollCtl(l.gate, unix.EPOLL_CTL_DEL, l.epfd, nil)
	l.gated, l.armed = false, false
	l.toggles.Add(1)
}

// add polls s on loop i (i < 0: the next loop in turn).
func (p *poller) add(s *sock, i int) error {
	if i < 0 {
		i = int(p.next.Add(1))
	}
	l := p.loops[i%len(p.loops)]
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return errSockClosed
	}
	s.loop = l
	l.socks[int32(s.fd)] = s
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(s.fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, s.fd, &ev); err != nil {
		delete(l.socks, int32(s.fd))
		s.loop = nil
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	return nil
}

// remove stops polling s; called with s.mu held exclusively, before its
// descriptor is closed.
func (l *loop) remove(s *sock) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.stopped {
		_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, s.fd, nil)
	}
	if l.socks[int32(s.fd)] == s {
		delete(l.socks, int32(s.fd))
	}
}

// stop ends every loop and waits for them.
func (p *poller) stop() {
	p.once.Do(func() {
		for _, l := range p.loops {
			l.mu.Lock()
			l.stopped = true
			// Closing what the netpoller watches wakes the loop's
			// goroutine with an error.
			if l.file != nil {
				_ = l.file.Close()
			}
			_ = l.gateFile.Close()
			l.mu.Unlock()
		}
		p.wg.Wait()
		for _, l := range p.loops {
			unix.Close(l.epfd) // no loop polls it any more
		}
	})
}

func (l *loop) run(wg *sync.WaitGroup) {
	defer wg.Done()
	events := make([]unix.EpollEvent, 128)
	ready := make([]*sock, 0, len(events))
	take := func(uintptr) bool {
		n := epollPoll(l.epfd, events)
		if n <= 0 {
			if l.gated && !l.armed {
				l.arm()
			}
			return false // nothing ready: park in the netpoller
		}
		switch {
		case l.gated && n < quietEvents:
			l.quiet++
			if l.quiet >= quietRounds {
				l.flip = true // after this round
			}
		case l.gated && n >= busyEvents:
			l.quiet = 0
			if l.armed {
				l.disarm()
			}
		case !l.gated && n >= busyEvents:
			l.busy++
			if l.busy >= busyRounds {
				l.flip = true
			}
		case !l.gated:
			l.busy = 0
		}
		ready = ready[:0]
		l.mu.RLock()
		for _, ev := range events[:n] {
			if s := l.socks[ev.Fd]; s != nil {
				ready = append(ready, s)
			}
		}
		l.mu.RUnlock()
		for _, s := range ready {
			switch {
			case s.group != nil:
				s.group.readable(l, s)
			case s.alloc != nil:
				s.alloc.readable(l)
			}
		}
		clear(ready)
		for _, out := range l.outs {
			out.flush()
		}
		return true
	}
	for {
		l.mu.RLock()
		f, stopped := l.file, l.stopped
		l.mu.RUnlock()
		if stopped {
			return
		}
		if l.gated {
			f = l.gateFile
		}
		rc, err := f.SyscallConn()
		if err != nil {
			l.e.log.Error("relay epoll loop stopped", "error", err)
			return
		}
		for !l.flip {
			if err := rc.Read(take); err != nil {
				return // closed by stop
			}
		}
		l.flip = false
		l.toggle()
	}
}

// recv reads one datagram from s into b. ok is false when there is nothing
// to read or s is closed.
func (l *loop) recv(s *sock, b []byte) (n int, src netip.AddrPort, ok bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return 0, src, false
	}
	n, src, errno := recvfrom(s.fd, b, &l.sa)
	return n, src, errno == 0
}

// tid is a transaction ID for a Data indication.
func (l *loop) tid() (t [12]byte) {
	binary.LittleEndian.PutUint64(t[0:8], rand.Uint64())
	binary.LittleEndian.PutUint32(t[8:12], rand.Uint32())
	return t
}

// out is the loop's send batch toward the clients of group g (made with the
// group: a fixed cost, not one per allocation). The loop lists it for its
// end-of-round flush on first use.
func (l *loop) out(g *Group) *mmsg {
	m := g.outs[l.index]
	if !m.listed {
		m.listed = true
		l.outs = append(l.outs, m)
	}
	return m
}
