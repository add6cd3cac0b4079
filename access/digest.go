package access

import (
	"crypto/hmac"
	"crypto/md5" //nolint:gosec // RFC 8760 keeps MD5 for interoperability
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"portcullis/internal/keyedmac"
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

// DigestParams are the parameters of a Digest Authorization header
// (RFC 3261 §25.1 digest-response, RFC 7616 §3.4).
type DigestParams struct {
	Username, Realm, Nonce, URI, Response, Algorithm, QOP, NC, CNonce, Opaque string
}

// ErrDigestSyntax is returned for an unparsable Authorization header.
var ErrDigestSyntax = errors.New("malformed Digest credentials")

// ParseDigest parses `Digest k=v, k="v", ...`. Unknown parameters are
// ignored; a quoted value may contain commas and escaped quotes.
func ParseDigest(h string) (DigestParams, error) {
	var p DigestParams
	scheme, rest, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "Digest") || len(h) > 4096 {
		return p, ErrDigestSyntax
	}
	for rest = strings.TrimSpace(rest); rest != ""; {
		eq := strings.IndexByte(rest, '=')
		if eq <= 0 {
			return p, ErrDigestSyntax
		}
		key := strings.ToLower(strings.TrimSpace(rest[:eq]))
		rest = strings.TrimLeft(rest[eq+1:], " \t")
		var val string
		if strings.HasPrefix(rest, `"`) {
			var b strings.Builder
			i := 1
			for ; i < len(rest) && rest[i] != '"'; i++ {
				if rest[i] == '\\' && i+1 < len(rest) {
					i++
				}
				b.WriteByte(rest[i])
			}
			if i >= len(rest) {
				return p, ErrDigestSyntax // unterminated quote
			}
			val, rest = b.String(), rest[i+1:]
		} else {
			end := strings.IndexByte(rest, ',')
			if end < 0 {
				end = len(rest)
			}
			val, rest = strings.TrimSpace(rest[:end]), rest[end:]
		}
		rest = strings.TrimLeft(rest, " \t")
		if rest != "" {
			if rest[0] != ',' {
				return p, ErrDigestSyntax
			}
			rest = strings.TrimLeft(rest[1:], " \t")
		}
		switch key {
		case "username":
			p.Username = val
		case "realm":
			p.Realm = val
		case "nonce":
			p.Nonce = val
		case "uri":
			p.URI = val
		case "response":
			p.Response = val
		case "algorithm":
			p.Algorithm = val
		case "qop":
			p.QOP = val
		case "nc":
			p.NC = val
		case "cnonce":
			p.CNonce = val
		case "opaque":
			p.Opaque = val
		}
	}
	if p.Username == "" || p.Realm == "" || p.Nonce == "" || p.URI == "" || p.Response == "" {
		return p, ErrDigestSyntax
	}
	return p, nil
}

// Digest verification errors.
var (
	ErrDigestStale     = errors.New("nonce expired")
	ErrDigestBadNonce  = errors.New("nonce not issued here")
	ErrDigestReplay    = errors.New("nonce count replayed")
	ErrDigestAlgorithm = errors.New("algorithm not allowed in this realm")
	ErrDigestQOP       = errors.New(`qop must be "auth" with nc and cnonce`)
	ErrDigestResponse  = errors.New("wrong response (password)")
	ErrDigestUnknown   = errors.New("unknown user")
	ErrDigestRealm     = errors.New("unknown realm")
)

// Digest issues challenges and verifies credentials for SIP digest
// authentication (RFC 3261 §22, RFC 8760: SHA-256 and MD5, qop=auth).
// Nonces are stateless (HMAC of their issue time) and expire; the highest
// nonce count seen is kept only for nonces that authenticated successfully,
// so replays are refused and an attacker without a password cannot grow the
// state.
type Digest struct {
	mac      *keyedmac.Key
	lifetime time.Duration
	realms   map[string][]string // realm → algorithms offered, preferred first

	mu  sync.Mutex
	ncs map[string]ncEntry
	// sweepAt is the size at which ncs is next swept for expired nonces:
	// twice what a sweep leaves, so sweeping costs O(1) per entry added
	// however many nonces are live.
	sweepAt int
}

// minSweep is the fewest remembered nonces worth a sweep.
const minSweep = 4096

type ncEntry struct {
	nc      uint64
	expires time.Time
}

// NewDigest makes a verifier for realms (realm → algorithms, e.g.
// {"example.test": {"SHA-256", "MD5"}}) with nonces valid for lifetime.
func NewDigest(realms map[string][]string, lifetime time.Duration) *Digest {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	return &Digest{mac: keyedmac.New(key), lifetime: lifetime, realms: realms, ncs: map[string]ncEntry{}}
}

// Realms lists the realms served.
func (d *Digest) Realms() map[string][]string { return d.realms }

func (d *Digest) nonceAt(t time.Time) string {
	b := make([]byte, 8, 8+16)
	binary.BigEndian.PutUint64(b, uint64(t.UnixNano()))
	b = d.mac.Sum(b, b)[:8+16]
	return base64.RawURLEncoding.EncodeToString(b)
}

func (d *Digest) checkNonce(n string, now time.Time) (time.Time, error) {
	b, err := base64.RawURLEncoding.DecodeString(n)
	if err != nil || len(b) != 24 {
		return time.Time{}, ErrDigestBadNonce
	}
	var buf [32]byte
	if !hmac.Equal(d.mac.Sum(buf[:0], b[:8])[:16], b[8:]) {
		return time.Time{}, ErrDigestBadNonce
	}
	issued := time.Unix(0, int64(binary.BigEndian.Uint64(b[:8])))
	if now.Sub(issued) > d.lifetime || issued.After(now.Add(time.Minute)) {
		return time.Time{}, ErrDigestStale
	}
	return issued, nil
}

// Challenges returns the WWW-Authenticate (or Proxy-Authenticate) values
// for realm, preferred algorithm first (RFC 8760 §2.4); stale marks a
// challenge that follows an expired nonce.
func (d *Digest) Challenges(realm string, stale bool) []string {
	nonce := d.nonceAt(time.Now())
	var out []string
	for _, alg := range d.realms[realm] {
		c := fmt.Sprintf(`Digest realm="%s", nonce="%s", algorithm=%s, qop="auth"`, realm, nonce, alg)
		if stale {
			c += ", stale=true"
		}
		out = append(out, c)
	}
	return out
}

// Verify checks credentials p for method; ha1 looks up a user's HA1 for an
// algorithm. It returns nil, or one of the Digest errors.
func (d *Digest) Verify(p DigestParams, method string, ha1 func(username, realm, alg string) (string, error)) error {
	algs, ok := d.realms[p.Realm]
	if !ok {
		return ErrDigestRealm
	}
	alg := p.Algorithm
	if alg == "" {
		alg = DigestMD5 // RFC 2617 §3.2.2: absent means MD5
	}
	if !slices.Contains(algs, alg) {
		return ErrDigestAlgorithm
	}
	now := time.Now()
	issued, err := d.checkNonce(p.Nonce, now)
	if err != nil {
		return err
	}
	nc, err := strconv.ParseUint(p.NC, 16, 32)
	if p.QOP != "auth" || err != nil || len(p.NC) != 8 || p.CNonce == "" || nc == 0 {
		return ErrDigestQOP
	}
	secret, err := ha1(p.Username, p.Realm, alg)
	if err != nil {
		return ErrDigestUnknown
	}
	ha2 := DigestHash(alg, method+":"+p.URI)
	want := DigestHash(alg, secret+":"+p.Nonce+":"+p.NC+":"+p.CNonce+":auth:"+ha2)
	if subtle.ConstantTimeCompare([]byte(want), []byte(strings.ToLower(p.Response))) != 1 {
		return ErrDigestResponse
	}
	return d.remember(p.Nonce, nc, issued.Add(d.lifetime), now)
}

// remember records nonce count nc of a nonce that has just authenticated,
// refusing a count not above the last one seen (a replay).
func (d *Digest) remember(nonce string, nc uint64, expires, now time.Time) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e, seen := d.ncs[nonce]; seen && nc <= e.nc {
		return ErrDigestReplay
	}
	if len(d.ncs) >= max(d.sweepAt, minSweep) {
		for k, e := range d.ncs {
			if now.After(e.expires) {
				delete(d.ncs, k)
			}
		}
		d.sweepAt = 2 * len(d.ncs)
	}
	d.ncs[nonce] = ncEntry{nc: nc, expires: expires}
	return nil
}
