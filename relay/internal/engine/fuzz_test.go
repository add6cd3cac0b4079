package engine

import (
	"bufio"
	"bytes"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v4"
	"golang.org/x/time/rate"

	"portcullis/access"
	"portcullis/policy"
)

func seeds(f *testing.F) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	cred := access.IssueTURN(secret, "alice", time.Hour, time.Now())
	add := func(setters ...stun.Setter) {
		m, err := stun.Build(setters...)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(m.Raw)
	}
	add(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	add(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest),
		stun.NewUsername(cred.Username), stun.NewRealm("example.test"), stun.NewNonce("abc"),
		stun.NewLongTermIntegrity(cred.Username, "example.test", cred.Password), stun.Fingerprint)
	add(stun.TransactionID, stun.NewType(stun.MethodCreatePermission, stun.ClassRequest),
		setterFunc(func(m *stun.Message) error {
			return stun.XORMappedAddress{IP: []byte{10, 0, 0, 1}, Port: 9}.AddToAs(m, stun.AttrXORPeerAddress)
		}),
		stun.NewUsername(cred.Username), stun.NewRealm("example.test"), stun.NewNonce("abc"),
		stun.NewLongTermIntegrity(cred.Username, "example.test", cred.Password))
	add(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassErrorResponse), stun.CodeUnauthorized)
	f.Add([]byte{0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4})
	f.Add([]byte{0x7f, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
	f.Add([]byte{})
}

type setterFunc func(m *stun.Message) error

func (s setterFunc) AddTo(m *stun.Message) error { return s(m) }

func FuzzClassify(f *testing.F) {
	seeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		k, _ := classify(b)
		switch k {
		case kindSTUN:
			if len(b) < stunHeaderLen {
				t.Fatal("short STUN accepted")
			}
			_ = errorCode(b)
		case kindChannelData:
			_, payload := channelData(b)
			if len(payload) > len(b)-4 {
				t.Fatal("payload beyond datagram")
			}
		}
	})
}

func FuzzReadFrame(f *testing.F) {
	seeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bufio.NewReaderSize(bytes.NewReader(b), maxFrame)
		buf := make([]byte, maxFrame)
		for {
			fr, err := readFrame(r, buf)
			if err != nil {
				return
			}
			if len(fr) > maxFrame {
				t.Fatal("frame over the bound")
			}
		}
	})
}

// The whole front filter on arbitrary input: never a panic; at most one
// answer per message.
func FuzzFilter(f *testing.F) {
	seeds(f)
	pol, _ := policy.NewPeerPolicy([]string{"127.0.0.1/32"}, nil)
	e, err := New(Config{Log: slog.New(slog.DiscardHandler), Realm: "example.test", Tune: Tunables{Secret: []byte("0123456789abcdef0123456789abcdef"), Policy: pol, QuotaTotal: 1},
		UnauthRate: rate.Inf})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(e.Stop)
	client, local := netip.MustParseAddrPort("198.51.100.7:4000"), netip.MustParseAddrPort("203.0.113.70:3478")
	f.Fuzz(func(t *testing.T, b []byte) {
		k, h := classify(b)
		if k != kindSTUN {
			return
		}
		answers := 0
		_, _ = e.filter(b, h, client, local, true, func([]byte) { answers++ })
		if answers > 1 {
			t.Fatalf("%d answers to one message", answers)
		}
		_ = e.outgoing(b, nil, false)
	})
}
