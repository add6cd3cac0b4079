package engine

import (
	"fmt"
	"net/netip"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// batchLen is the datagrams one recvmmsg or sendmmsg call moves.
const batchLen = 32

// mmsg is a batch of datagrams for recvmmsg(2) or sendmmsg(2): buffers,
// addresses and headers made once per loop and reused, so a batch costs one
// system call and no allocation. A buffer has 4 bytes of room in front for
// a ChannelData header.
type mmsg struct {
	hdrs  [batchLen]unix.Mmsghdr
	iovs  [batchLen]unix.Iovec
	names [batchLen]unix.RawSockaddrInet6
	bufs  [batchLen][bufLen]byte
	n     int     // datagrams queued (send) or read (receive)
	s     *sock   // the socket a send batch leaves from
	e     *Engine // counts what a send batch drops
	// listed: the owning loop flushes this batch at the end of its rounds.
	listed bool

	// A send batch's datagrams as sent: runs to one destination with one
	// size become one message with UDP_SEGMENT (see coalesce).
	wire  [batchLen]unix.Mmsghdr
	first [batchLen]uint8 // the queued datagram each wire message starts at
	ctl   [batchLen][gsoCmsgLen]byte
}

// gsoCmsgLen is the room for a UDP_SEGMENT control message (a uint16;
// unix.CmsgSpace(2) is 24 on 64-bit Linux, checked in init).
const gsoCmsgLen = 24

func init() {
	if unix.CmsgSpace(2) > gsoCmsgLen {
		panic("engine: UDP_SEGMENT control message does not fit")
	}
}

// putSegment writes a UDP_SEGMENT control message for segments of size
// bytes into c and returns its length.
func putSegment(c *[gsoCmsgLen]byte, size int) int {
	ch := (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
	ch.Level, ch.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	ch.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&c[unix.CmsgLen(0)])) = uint16(size)
	return unix.CmsgSpace(2)
}

// gsoProbe is probeGSO's answer, asked once per process (the kernel does
// not change under a running edge; tests make many engines).
var gsoProbe = sync.OnceValue(probeGSO)

// probeGSO checks, over loopback, that the kernel splits a message
// sent with UDP_SEGMENT: a kernel before 4.18 ignores the control message
// and would deliver the run as one datagram.
func probeGSO() error {
	rx, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(rx)
	tx, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(tx)
	if err := unix.Bind(rx, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return err
	}
	to, err := unix.Getsockname(rx)
	if err != nil {
		return err
	}
	_ = unix.SetsockoptTimeval(rx, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1})
	var c [gsoCmsgLen]byte
	n := putSegment(&c, 2)
	if err := unix.Sendmsg(tx, []byte("abcde"), c[:n], to, 0); err != nil {
		return err
	}
	b := make([]byte, 8)
	for _, want := range []string{"ab", "cd", "e"} {
		got, _, err := unix.Recvfrom(rx, b, 0)
		if err != nil {
			return err
		}
		if string(b[:got]) != want {
			return fmt.Errorf("a run of 2-byte segments arrived as %q", b[:got])
		}
	}
	return nil
}

// bufLen is a send buffer: header room, a datagram, padding.
const bufLen = headroom + mtu + 4

func newMmsg(e *Engine, s *sock) *mmsg {
	m := &mmsg{s: s, e: e}
	for i := range m.hdrs {
		m.iovs[i].Base = &m.bufs[i][0]
		m.hdrs[i].Hdr.Name = (*byte)(unsafe.Pointer(&m.names[i]))
		m.hdrs[i].Hdr.Iov = &m.iovs[i]
		m.hdrs[i].Hdr.SetIovlen(1)
		m.iovs[i].SetLen(mtu)
		m.hdrs[i].Hdr.Namelen = unix.SizeofSockaddrInet6
	}
	return m
}

// recv reads up to batchLen datagrams from s; m.n says how many. (A
// receive batch never queues, so only the lengths the last call overwrote
// are reset.)
func (m *mmsg) recv(s *sock) bool {
	for i := range m.n {
		m.iovs[i].SetLen(mtu)
		m.hdrs[i].Hdr.Namelen = unix.SizeofSockaddrInet6
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	m.n = 0
	if s.closed {
		return false
	}
	n, _, errno := syscall.RawSyscall6(unix.SYS_RECVMMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&m.hdrs[0])), batchLen, 0, 0, 0)
	if errno != 0 {
		return false
	}
	m.n = int(n)
	return m.n > 0
}

// datagram i of a received batch and its source.
func (m *mmsg) datagram(i int) ([]byte, netip.AddrPort) {
	return m.bufs[i][:m.hdrs[i].Len], addrFrom(&m.names[i])
}

// slot is the buffer the next queued datagram is built in.
func (m *mmsg) slot() []byte { return m.bufs[m.n][:] }

// queue commits n bytes of the slot from start, to dst; a full batch is
// sent.
func (m *mmsg) queue(start, n int, dst netip.AddrPort) {
	m.iovs[m.n].Base = &m.bufs[m.n][start]
	m.iovs[m.n].SetLen(n)
	m.hdrs[m.n].Hdr.Namelen = putSockaddr(&m.names[m.n], dst, m.s.v6)
	m.n++
	if m.n == batchLen {
		m.flush()
	}
}

// flush sends what is queued. A full socket buffer drops the rest, counted,
// as UDP does: the loop never blocks.
func (m *mmsg) flush() {
	queued := m.n
	m.n = 0
	sent := m.send(queued)
	for i := sent; i < queued; i++ {
		m.e.cfg.Events.Drop(DropOverload, int(m.iovs[i].Len))
	}
}

func (m *mmsg) send(queued int) (sent int) {
	if queued == 0 {
		return 0
	}
	m.s.mu.RLock()
	defer m.s.mu.RUnlock()
	if m.s.closed {
		return 0
	}
	w := m.coalesce(queued)
	for k := 0; k < w; {
		r, _, errno := syscall.RawSyscall6(unix.SYS_SENDMMSG, uintptr(m.s.tx), uintptr(unsafe.Pointer(&m.wire[k])), uintptr(w-k), 0, 0, 0)
		if errno == 0 {
			k += int(r)
			continue
		}
		switch {
		case errno == unix.EINTR:
		case errno == unix.EAGAIN:
			return int(m.first[k])
		case m.wire[k].Hdr.Iovlen > 1:
			// The kernel refused the run as one message (a segment over
			// the path MTU, or no checksum offload: EIO, then no more
			// runs): its datagrams go one by one.
			m.e.runRefused(errno)
			m.sendEach(k)
			k++
		default:
			// This datagram is refused (a pending ICMP error, ...):
			// skip it, counted as dropped.
			m.e.cfg.Events.Drop(DropOverload, int(m.iovs[m.first[k]].Len))
			k++
		}
	}
	return queued
}

// runRefused notes why the kernel refused a run: EIO (no checksum offload
// on the route) will refuse every run, so runs are turned off; EINVAL (a
// segment over the path MTU) is this run's alone.
func (e *Engine) runRefused(errno syscall.Errno) {
	if errno == unix.EIO {
		e.gsoOff.Store(true)
	}
}

// maxSegments bounds a run sent as one message (the kernel takes up to 64
// or 128 segments, 64 KiB in all; batchLen is below both).
const maxSegments = batchLen

// coalesce lays out the queued datagrams as messages for sendmmsg: a run of
// datagrams to one destination with one size (the last may be shorter)
// becomes one message with UDP_SEGMENT, so the kernel routes, filters and
// delivers them as one packet and splits it only at the end (Generic
// Segmentation Offload; on loopback, at the receiving socket). The loops
// queue such runs when they read several datagrams of one allocation in a
// round (Alloc.readable). It returns the number of messages.
func (m *mmsg) coalesce(queued int) int {
	gso := !m.e.gsoOff.Load()
	w := 0
	for i := 0; i < queued; {
		size := m.iovs[i].Len
		j := i + 1
		for gso && j < queued && j-i < maxSegments && m.iovs[j].Len <= size && m.sameDst(i, j) {
			j++
			if m.iovs[j-1].Len < size {
				break
			}
		}
		h := &m.wire[w]
		h.Hdr = m.hdrs[i].Hdr
		h.Hdr.Control, h.Hdr.Controllen = nil, 0
		if n := j - i; n > 1 {
			h.Hdr.SetIovlen(n)
			h.Hdr.Control = &m.ctl[w][0]
			h.Hdr.SetControllen(putSegment(&m.ctl[w], int(size)))
		}
		m.first[w] = uint8(i)
		w++
		i = j
	}
	return w
}

// sameDst says whether queued datagrams i and j go to one address.
func (m *mmsg) sameDst(i, j int) bool {
	n := m.hdrs[i].Hdr.Namelen
	if m.hdrs[j].Hdr.Namelen != n {
		return false
	}
	a := unsafe.Slice((*byte)(unsafe.Pointer(&m.names[i])), n)
	b := unsafe.Slice((*byte)(unsafe.Pointer(&m.names[j])), n)
	return string(a) == string(b)
}

// sendEach sends the datagrams of wire message k one by one; each refused
// is dropped, counted.
func (m *mmsg) sendEach(k int) {
	first := int(m.first[k])
	for i := first; i < first+int(m.wire[k].Hdr.Iovlen); i++ {
		b := unsafe.Slice(m.iovs[i].Base, m.iovs[i].Len)
		var errno syscall.Errno
		for errno = unix.EINTR; errno == unix.EINTR; {
			_, _, errno = syscall.RawSyscall6(unix.SYS_SENDTO, uintptr(m.s.tx), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0,
				uintptr(unsafe.Pointer(&m.names[i])), uintptr(m.hdrs[i].Hdr.Namelen))
		}
		if errno != 0 {
			m.e.cfg.Events.Drop(DropOverload, len(b))
		}
	}
}

// putSockaddr writes dst as a raw socket address (IPv4 as mapped IPv6 for
// an AF_INET6 socket) and returns its length.
func putSockaddr(sa *unix.RawSockaddrInet6, dst netip.AddrPort, v6 bool) uint32 {
	ip := dst.Addr()
	if v6 || !ip.Is4() {
		*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: ip.As16()}
		putPort(&sa.Port, dst.Port())
		return unix.SizeofSockaddrInet6
	}
	sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
	*sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ip.As4()}
	putPort(&sa4.Port, dst.Port())
	return unix.SizeofSockaddrInet4
}

// addrFrom reads a raw socket address, IPv4-mapped addresses as IPv4.
func addrFrom(sa *unix.RawSockaddrInet6) netip.AddrPort {
	pb := (*[2]byte)(unsafe.Pointer(&sa.Port))
	port := uint16(pb[0])<<8 | uint16(pb[1])
	if sa.Family == unix.AF_INET {
		return netip.AddrPortFrom(netip.AddrFrom4((*unix.RawSockaddrInet4)(unsafe.Pointer(sa)).Addr), port)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port)
}
