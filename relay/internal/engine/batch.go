package engine

import (
	"net/netip"
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
	for sent < queued {
		r, _, errno := syscall.RawSyscall6(unix.SYS_SENDMMSG, uintptr(m.s.tx), uintptr(unsafe.Pointer(&m.hdrs[sent])), uintptr(queued-sent), 0, 0, 0)
		if errno != 0 {
			if errno == unix.EINTR {
				continue
			}
			if errno != unix.EAGAIN {
				// This datagram is refused (a pending ICMP error, ...):
				// skip it, counted as dropped.
				m.e.cfg.Events.Drop(DropOverload, int(m.iovs[sent].Len))
				sent++
				continue
			}
			return sent
		}
		sent += int(r)
	}
	return sent
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
