package access

import (
	"crypto/md5" //nolint:gosec // RFC 8760 keeps MD5 for interoperability
	"crypto/sha256"
	"encoding/hex"
	"hash"
)

// Digest algorithms (RFC 8760 §2).
const (
	DigestMD5    = "MD5"
	DigestSHA256 = "SHA-256"
)

func newHash(alg string) hash.Hash {
	if alg == DigestSHA256 {
		return sha256.New()
	}
	return md5.New() //nolint:gosec
}

// DigestHash is H(s) in hex for the algorithm.
func DigestHash(alg, s string) string {
	h := newHash(alg)
	h.Write([]byte(s))
	return hex.EncodeToString(h.Sum(nil))
}

// HA1 is H(username:realm:password) (RFC 8760 §3, RFC 2617 §3.2.2.2).
func HA1(alg, username, realm, password string) string {
	return DigestHash(alg, username+":"+realm+":"+password)
}
