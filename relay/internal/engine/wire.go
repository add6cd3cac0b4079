// Package engine is the relay's data plane and its front filter. pion/turn
// runs the TURN state machines; the engine wraps every socket pion reads and
// writes so that it can check credentials before pion does, answer what pion
// would not (401 for expired credentials, 400 for unknown methods, 508/300 at
// capacity), rate-limit 401 answers per source, account and cap bandwidth,
// and forward ChannelData without going through pion at all once a channel is
// bound and permitted.
package engine

import (
	"encoding/binary"
	"net/netip"
)

// STUN header facts (RFC 8489 §5).
const (
	stunHeaderLen = 20
	magicCookie   = 0x2112A442
)

// Message classes (RFC 8489 §5: C1 is bit 8, C0 bit 4 of the type).
const (
	classRequest    = 0x000
	classIndication = 0x010
	classSuccess    = 0x100
	classError      = 0x110
)

// STUN/TURN methods the relay knows (RFC 8489, RFC 8656, RFC 6062).
const (
	methodBinding           = 0x001
	methodAllocate          = 0x003
	methodRefresh           = 0x004
	methodSend              = 0x006
	methodData              = 0x007
	methodCreatePermission  = 0x008
	methodChannelBind       = 0x009
	methodConnect           = 0x00a
	methodConnectionBind    = 0x00b
	methodConnectionAttempt = 0x00c
)

// kind is what a datagram or frame is.
type kind int

const (
	kindMalformed kind = iota
	kindSTUN
	kindChannelData
)

// header is the part of a STUN message the engine reads itself.
type header struct {
	method uint16
	class  uint16
}

// classify looks at the first bytes of b: a STUN message whose length field
// matches len(b), or a ChannelData message (RFC 8656 §12.4) whose length fits
// in b (UDP may carry padding after it). Anything else is malformed.
func classify(b []byte) (kind, header) {
	if len(b) < 4 {
		return kindMalformed, header{}
	}
	switch b[0] >> 6 {
	case 0:
		if len(b) < stunHeaderLen || binary.BigEndian.Uint32(b[4:8]) != magicCookie {
			return kindMalformed, header{}
		}
		if int(binary.BigEndian.Uint16(b[2:4]))+stunHeaderLen != len(b) || len(b)%4 != 0 {
			return kindMalformed, header{}
		}
		t := binary.BigEndian.Uint16(b[0:2])
		return kindSTUN, header{
			method: t&0x000f | (t&0x00e0)>>1 | (t&0x3e00)>>2,
			class:  t & 0x0110,
		}
	case 1:
		if 4+int(binary.BigEndian.Uint16(b[2:4])) > len(b) {
			return kindMalformed, header{}
		}
		return kindChannelData, header{}
	}
	return kindMalformed, header{}
}

// channelData returns the channel number and payload of a ChannelData
// message already classified as such.
func channelData(b []byte) (uint16, []byte) {
	return binary.BigEndian.Uint16(b[0:2]), b[4 : 4+int(binary.BigEndian.Uint16(b[2:4]))]
}

// putChannelHeader writes a ChannelData header into b[0:4].
func putChannelHeader(b []byte, number uint16, length int) {
	binary.BigEndian.PutUint16(b[0:2], number)
	binary.BigEndian.PutUint16(b[2:4], uint16(length))
}

// headroom is the room kept in front of a peer datagram in a send buffer:
// enough for a Data indication's header with an IPv6 peer (STUN header 20,
// XOR-PEER-ADDRESS 4+20, DATA header 4).
const headroom = 48

// putDataIndication writes, in front of the n-byte payload at b[headroom:],
// a Data indication (RFC 8656 §11.4: no MESSAGE-INTEGRITY) from peer with
// transaction ID tid, pads the DATA attribute to 4 bytes after the payload,
// and returns where the message starts and its length.
func putDataIndication(b []byte, n int, peer netip.AddrPort, tid [12]byte) (start, length int) {
	addrLen := 8
	if peer.Addr().Is6() {
		addrLen = 20
	}
	start = headroom - (stunHeaderLen + 4 + addrLen + 4)
	pad := (4 - n%4) % 4
	clear(b[headroom+n : headroom+n+pad])
	h := b[start:headroom]
	binary.BigEndian.PutUint16(h[0:2], 0x0017) // Data indication
	binary.BigEndian.PutUint16(h[2:4], uint16(len(h)-stunHeaderLen+n+pad))
	binary.BigEndian.PutUint32(h[4:8], magicCookie)
	copy(h[8:20], tid[:])
	a := h[20:]
	binary.BigEndian.PutUint16(a[0:2], 0x0012) // XOR-PEER-ADDRESS
	binary.BigEndian.PutUint16(a[2:4], uint16(addrLen))
	a[4] = 0
	binary.BigEndian.PutUint16(a[6:8], peer.Port()^uint16(magicCookie>>16))
	if addrLen == 8 {
		a[5] = 0x01
		ip := peer.Addr().As4()
		binary.BigEndian.PutUint32(a[8:12], binary.BigEndian.Uint32(ip[:])^magicCookie)
	} else {
		a[5] = 0x02
		ip := peer.Addr().As16()
		copy(a[8:24], ip[:])
		for i, k := range h[4:20] { // the cookie, then the transaction ID
			a[8+i] ^= k
		}
	}
	d := a[4+addrLen:]
	binary.BigEndian.PutUint16(d[0:2], 0x0013) // DATA
	binary.BigEndian.PutUint16(d[2:4], uint16(n))
	return start, headroom - start + n + pad
}

// knownMethod reports whether the relay handles method in class.
func knownMethod(h header) bool {
	switch h.class {
	case classRequest:
		switch h.method {
		case methodBinding, methodAllocate, methodRefresh, methodCreatePermission,
			methodChannelBind, methodConnect, methodConnectionBind:
			return true
		}
	case classIndication:
		return h.method == methodSend || h.method == methodBinding
	}
	return false
}

// authenticated reports whether requests of this method carry long-term
// credentials (everything but Binding).
func authenticated(h header) bool {
	return h.class == classRequest && h.method != methodBinding
}
