// Package keyedmac computes HMAC-SHA-256 under one process key with pooled
// hashers: the SIP path signs and checks a token or nonce on nearly every
// request, and a fresh hmac.New costs two SHA-256 states and their buffers
// each time.
package keyedmac

import (
	"crypto/hmac"
	"crypto/sha256"
	"hash"
	"sync"
)

// Key is an HMAC-SHA-256 key with a pool of hashers.
type Key struct{ pool sync.Pool }

// New makes a Key; key is not copied and must not change.
func New(key []byte) *Key {
	k := &Key{}
	k.pool.New = func() any { return hmac.New(sha256.New, key) }
	return k
}

// Sum appends HMAC-SHA-256(key, parts...) to dst and returns it.
func (k *Key) Sum(dst []byte, parts ...[]byte) []byte {
	m := k.pool.Get().(hash.Hash)
	m.Reset()
	for _, p := range parts {
		m.Write(p)
	}
	dst = m.Sum(dst)
	k.pool.Put(m)
	return dst
}
