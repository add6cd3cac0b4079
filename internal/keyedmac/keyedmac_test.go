package keyedmac

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"sync"
	"testing"
)

// The pooled sum equals a fresh hmac.New's, also when hashers are reused
// concurrently.
func TestSumMatchesHMAC(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	k := New(key)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				a, b := []byte{byte(g)}, bytes.Repeat([]byte{byte(i)}, i)
				m := hmac.New(sha256.New, key)
				m.Write(a)
				m.Write(b)
				want := m.Sum([]byte("prefix"))
				if got := k.Sum([]byte("prefix"), a, b); !bytes.Equal(got, want) {
					t.Errorf("g=%d i=%d: %x, want %x", g, i, got, want)
					return
				}
			}
		}(g)
	}
	wg.Wait()
}

func BenchmarkSum(b *testing.B) {
	k := New(make([]byte, 32))
	p := []byte("127.0.0.1:45678/tls")
	var buf [64]byte
	b.ReportAllocs()
	for b.Loop() {
		k.Sum(buf[:0], p)
	}
}
