package sipnode

import (
	"crypto/hmac"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"portcullis/access"
	"portcullis/internal/keyedmac"
)

// FlowTokens seal small values into signed tokens usable as the user part of
// a SIP URI: the transport address of a connection (a flow, after RFC 5626
// §5.3), so that requests along a Record-Route or Path go back over the
// connection the dialog or registration came on; or a route set, which an
// edge hides from the outside and restores on the way in. Only tokens this
// node made open.
type FlowTokens struct{ mac *keyedmac.Key }

// NewFlowTokens makes a signer with a fresh key (tokens do not outlive the
// process: a restarted node makes its dialogs and Paths unroutable).
func NewFlowTokens() *FlowTokens {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	return NewFlowTokensWithKey(k)
}

// NewFlowTokensWithKey makes a signer with a kept key, so that its tokens
// open after a restart.
func NewFlowTokensWithKey(key []byte) *FlowTokens { return &FlowTokens{mac: keyedmac.New(key)} }

// LoadOrMakeKey reads a 32-byte key (hex) from file, or makes one there
// (access.NewSecretFile, mode 0600) when the file does not exist.
func LoadOrMakeKey(file string) ([]byte, error) {
	for range 2 { // made here (or by another process meanwhile), then read
		b, err := os.ReadFile(file)
		if err == nil {
			return parseKey(file, b)
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		if err := access.NewSecretFile(file); err != nil && !errors.Is(err, access.ErrExists) {
			return nil, err
		}
	}
	return nil, fmt.Errorf("%s: cannot be read or made", file)
}

func parseKey(file string, b []byte) ([]byte, error) {
	k, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(k) != 32 {
		return nil, fmt.Errorf("%s: not a key of 32 bytes in hex", file)
	}
	return k, nil
}

// CheckKeyFile says whether LoadOrMakeKey can work with file, making
// nothing: a key there, or a folder to make it in.
func CheckKeyFile(file string) error {
	b, err := os.ReadFile(file)
	if err == nil {
		_, err = parseKey(file, b)
		return err
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if fi, err := os.Stat(filepath.Dir(file)); err != nil || !fi.IsDir() {
		return fmt.Errorf("%s: missing, and its folder is not there to make it in", file)
	}
	return nil
}

const (
	kindFlow    = 'F'
	kindRoutes  = 'R'
	kindPartner = 'P'
	kindDialog  = 'D'
)

func (f *FlowTokens) seal(kind byte, payload string) string {
	b := make([]byte, 0, 1+len(payload)+32)
	b = append(append(b, kind), payload...)
	b = f.mac.Sum(b, b)
	return base64.RawURLEncoding.EncodeToString(b[:len(b)-20])
}

func (f *FlowTokens) unseal(kind byte, tok string) (string, bool) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(b) < 13 || b[0] != kind {
		return "", false
	}
	signed, sum := b[:len(b)-12], b[len(b)-12:]
	var buf [32]byte
	if !hmac.Equal(f.mac.Sum(buf[:0], signed)[:12], sum) {
		return "", false
	}
	return string(signed[1:]), true
}

// Make seals a flow (Node.Flow: a transport address, and maybe a
// connection's number).
func (f *FlowTokens) Make(addr string) string { return f.seal(kindFlow, addr) }

// Open returns the flow a token was made for, if we made it.
func (f *FlowTokens) Open(tok string) (string, bool) {
	flow, ok := f.unseal(kindFlow, tok)
	if !ok || !validFlow(flow) {
		return "", false
	}
	return flow, true
}

// Dialog is what a proxy's Record-Route token carries: the caller's flow,
// and the dialog it was made for (its Call-ID and its two parties'
// addresses of record), so that the route serves that dialog only.
type Dialog struct {
	Flow, CallID, Caller, Callee string
}

// MakeDialog seals a dialog's Record-Route. Each value is written with
// its length: a Call-ID is the caller's to choose, and must not be able to
// pass for the other fields.
func (f *FlowTokens) MakeDialog(d Dialog) string {
	var b []byte
	for _, v := range [...]string{d.Flow, d.CallID, d.Caller, d.Callee} {
		b = append(binary.AppendUvarint(b, uint64(len(v))), v...)
	}
	return f.seal(kindDialog, string(b))
}

// OpenDialog returns the dialog a token was made for, if we made it.
func (f *FlowTokens) OpenDialog(tok string) (Dialog, bool) {
	s, ok := f.unseal(kindDialog, tok)
	if !ok {
		return Dialog{}, false
	}
	var v [4]string
	b := []byte(s)
	for i := range v {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return Dialog{}, false
		}
		v[i], b = string(b[k:k+int(n)]), b[k+int(n):]
	}
	if !validFlow(v[0]) || len(b) != 0 {
		return Dialog{}, false
	}
	return Dialog{Flow: v[0], CallID: v[1], Caller: v[2], Callee: v[3]}, true
}

// MakeRoutes seals a route set (URIs in the order a request follows them).
func (f *FlowTokens) MakeRoutes(uris []string) string {
	return f.seal(kindRoutes, strings.Join(uris, "\n"))
}

// OpenRoutes returns the route set a token was made for, if we made it.
func (f *FlowTokens) OpenRoutes(tok string) ([]string, bool) {
	s, ok := f.unseal(kindRoutes, tok)
	if !ok {
		return nil, false
	}
	if s == "" {
		return nil, true
	}
	return strings.Split(s, "\n"), true
}

// MakePartner seals a flow to a federation partner's edge: its domain (the
// user agent that dials it) and address.
func (f *FlowTokens) MakePartner(domain, addr string) string {
	return f.seal(kindPartner, domain+"|"+addr)
}

// OpenPartner returns the partner domain and address a token was made for,
// if we made it.
func (f *FlowTokens) OpenPartner(tok string) (domain, addr string, ok bool) {
	s, ok := f.unseal(kindPartner, tok)
	if !ok {
		return "", "", false
	}
	domain, addr, ok = strings.Cut(s, "|")
	if _, err := netip.ParseAddrPort(addr); !ok || err != nil {
		return "", "", false
	}
	return domain, addr, true
}
