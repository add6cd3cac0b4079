package engine

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/pion/stun/v4"
)

// A Data indication built in place decodes, with pion's STUN codec, to the
// peer and payload it was built from, for both families and every padding.
func TestPutDataIndication(t *testing.T) {
	for _, peer := range []string{"198.51.100.7:5004", "[2001:db8::7]:5004"} {
		for _, n := range []int{0, 1, 2, 3, 4, 172, 1200} {
			ap := netip.MustParseAddrPort(peer)
			buf := make([]byte, bufLen)
			payload := bytes.Repeat([]byte{0xa5}, n)
			copy(buf[headroom:], payload)
			buf[headroom+n] = 0xff // padding must be cleared
			tid := [12]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
			start, length := putDataIndication(buf, n, ap, tid)
			msg := buf[start : start+length]
			if k, h := classify(msg); k != kindSTUN || h.method != methodData || h.class != classIndication {
				t.Fatalf("%s/%d: classified %v %+v", peer, n, k, h)
			}
			m := &stun.Message{Raw: msg}
			if err := m.Decode(); err != nil {
				t.Fatalf("%s/%d: %v", peer, n, err)
			}
			var xpa stun.XORMappedAddress
			if err := xpa.GetFromAs(m, stun.AttrXORPeerAddress); err != nil {
				t.Fatalf("%s/%d: XOR-PEER-ADDRESS: %v", peer, n, err)
			}
			got, _ := netip.AddrFromSlice(xpa.IP)
			if netip.AddrPortFrom(got.Unmap(), uint16(xpa.Port)) != ap {
				t.Errorf("%s/%d: peer %s:%d", peer, n, xpa.IP, xpa.Port)
			}
			data, err := m.Get(stun.AttrData)
			if err != nil || !bytes.Equal(data, payload) {
				t.Errorf("%s/%d: DATA %x, %v", peer, n, data, err)
			}
			if m.TransactionID != tid || length%4 != 0 {
				t.Errorf("%s/%d: tid %x, length %d", peer, n, m.TransactionID, length)
			}
		}
	}
}
