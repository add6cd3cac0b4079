package sipnode

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"net/netip"
)

// FlowTokens sign the transport address of a caller's connection into the
// user part of our Record-Route (after RFC 5626 §5.3), so that in-dialog
// requests toward the caller go back over the connection the INVITE came on,
// and only Routes we issued are honoured.
type FlowTokens struct{ key []byte }

// NewFlowTokens makes a signer with a fresh key (tokens do not outlive the
// process: a restarted node makes its dialogs and Paths unroutable).
func NewFlowTokens() *FlowTokens {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	return &FlowTokens{key: k}
}

// Make signs addr into a token usable as a SIP URI user part.
func (f *FlowTokens) Make(addr string) string {
	mac := hmac.New(sha256.New, f.key)
	mac.Write([]byte(addr))
	return base64.RawURLEncoding.EncodeToString(append([]byte(addr+"|"), mac.Sum(nil)[:12]...))
}

// Open returns the address a token was made for, if we made it.
func (f *FlowTokens) Open(tok string) (string, bool) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(b) < 13 {
		return "", false
	}
	addr, sum := string(b[:len(b)-13]), b[len(b)-12:]
	if b[len(b)-13] != '|' {
		return "", false
	}
	mac := hmac.New(sha256.New, f.key)
	mac.Write([]byte(addr))
	if !hmac.Equal(mac.Sum(nil)[:12], sum) {
		return "", false
	}
	if _, err := netip.ParseAddrPort(addr); err != nil {
		return "", false
	}
	return addr, true
}
