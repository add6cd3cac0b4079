// Package engine is the relay's data plane and its front filter. pion/turn
// runs the TURN state machines; the engine wraps every socket pion reads and
// writes so that it can check credentials before pion does, answer what pion
// would not (401 for expired credentials, 400 for unknown methods, 508/300 at
// capacity), rate-limit 401 answers per source, account and cap bandwidth,
// and forward ChannelData without going through pion at all once a channel is
// bound and permitted.
package engine

import "encoding/binary"

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
