package core

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"

	"portcullis/access"
	"portcullis/core/store"
	"portcullis/internal/config"
	"portcullis/internal/lifecycle"
)

// RegistrarConfig is the core's `registrar` section.
type RegistrarConfig struct {
	// Domains are the home domains; each is its own digest realm.
	Domains        []DomainConfig `yaml:"domains"`
	NonceLifetime  time.Duration  `yaml:"nonce_lifetime"`
	MinExpires     time.Duration  `yaml:"min_expires"`
	DefaultExpires time.Duration  `yaml:"default_expires"`
	MaxExpires     time.Duration  `yaml:"max_expires"`
	// MaxContacts caps the bindings of one address of record: a call to
	// it forks to every one, so without a cap one user could make every
	// call to them a flood. A REGISTER past it drops the binding that
	// expires soonest; one naming more contacts by itself gets 403.
	MaxContacts int `yaml:"max_contacts"`
}

// DomainConfig is one home domain and the digest algorithms offered in it,
// preferred first (MD5 alone for clients such as baresip 1.0 that fail on
// SHA-256 challenges: PROTOCOLS.md).
type DomainConfig struct {
	Domain     string   `yaml:"domain"`
	Algorithms []string `yaml:"algorithms"`
}

// Validate checks the section.
func (r *RegistrarConfig) Validate(v *config.V) {
	v.Check(len(r.Domains) > 0, "domains", "must list at least one home domain")
	seen := map[string]bool{}
	for i, d := range r.Domains {
		dv := v.In("domains[" + config.Itoa(i) + "]")
		_, _, dom, err := ParseAOR("sip:x@" + d.Domain)
		dv.Check(err == nil && dom == d.Domain, "domain", "must be a lower-case domain name, got %q", d.Domain)
		dv.Check(!seen[d.Domain], "domain", "listed twice")
		seen[d.Domain] = true
		dv.Check(len(d.Algorithms) > 0, "algorithms", "must list SHA-256, MD5 or both")
		for j, a := range d.Algorithms {
			dv.Check(a == access.DigestSHA256 || a == access.DigestMD5, "algorithms["+config.Itoa(j)+"]", "must be SHA-256 or MD5, got %q", a)
		}
	}
	v.Check(r.NonceLifetime >= 10*time.Second && r.NonceLifetime <= time.Hour, "nonce_lifetime", "must be between 10s and 1h, got %s", r.NonceLifetime)
	v.Check(r.MinExpires >= time.Second && r.MinExpires <= r.DefaultExpires && r.DefaultExpires <= r.MaxExpires && r.MaxExpires <= 24*time.Hour,
		"min_expires", "need 1s <= min_expires <= default_expires <= max_expires <= 24h, got %s, %s, %s", r.MinExpires, r.DefaultExpires, r.MaxExpires)
	v.Check(r.MaxContacts >= 1 && r.MaxContacts <= 1000, "max_contacts", "must be between 1 and 1000, got %d", r.MaxContacts)
}

func (r *RegistrarConfig) realms() map[string][]string {
	m := map[string][]string{}
	for _, d := range r.Domains {
		m[d.Domain] = d.Algorithms
	}
	return m
}

// authenticator runs digest authentication for the home realms: 401 with
// WWW-Authenticate for a registrar, 407 with Proxy-Authenticate for a proxy
// (RFC 3261 §22.2, §22.3).
type authenticator struct {
	st      *store.Store
	digest  *access.Digest
	log     *slog.Logger
	refused func(reason string)
}

func (a *authenticator) respond(tx sip.ServerTransaction, req *sip.Request, code int, reason string, hdrs ...sip.Header) {
	res := sip.NewResponseFromRequest(req, code, reason, nil)
	for _, h := range hdrs {
		res.AppendHeader(h)
	}
	if err := tx.Respond(res); err != nil {
		a.log.Warn("sending response failed", "status", code, "error", err)
	}
}

func (a *authenticator) refuse(tx sip.ServerTransaction, req *sip.Request, code int, reason, why string, hdrs ...sip.Header) {
	a.log.Info("request refused", "method", req.Method, "status", code, "why", why, "to", req.To().Address.String(), "source", req.Source())
	a.refused(why)
	a.respond(tx, req, code, reason, hdrs...)
}

// challenge answers 401 (or 407 for a proxy) with a challenge per allowed
// algorithm.
func (a *authenticator) challenge(tx sip.ServerTransaction, req *sip.Request, realm string, proxy, stale bool, why string) {
	name, code, reason := "WWW-Authenticate", 401, "Unauthorized"
	if proxy {
		name, code, reason = "Proxy-Authenticate", 407, "Proxy Authentication Required"
	}
	var hdrs []sip.Header
	for _, c := range a.digest.Challenges(realm, stale) {
		hdrs = append(hdrs, sip.NewHeader(name, c))
	}
	if why == "" {
		a.respond(tx, req, code, reason, hdrs...) // the usual first round: not a refusal
		return
	}
	a.refuse(tx, req, code, reason, why, hdrs...)
}

// authenticate returns the user whose credentials the request carries, or
// answers the request and returns false.
func (a *authenticator) authenticate(ctx context.Context, tx sip.ServerTransaction, req *sip.Request, realm string, proxy bool) (store.User, bool) {
	var user store.User
	ok := a.authenticateWith(tx, req, realm, proxy, func(username, realm, alg string) (string, error) {
		u, err := a.st.UserByDigest(ctx, username, realm)
		if err != nil {
			return "", err
		}
		user = u
		if alg == access.DigestSHA256 {
			return u.HA1SHA256, nil
		}
		return u.HA1MD5, nil
	})
	if !ok {
		return store.User{}, false
	}
	if user.Disabled {
		a.refuse(tx, req, 403, "Forbidden (account disabled)", "disabled")
		return store.User{}, false
	}
	return user, true
}

// homeSender authenticates the sender of a request to this server (407):
// a user of a home domain whose From is their own address of record.
func (a *authenticator) homeSender(ctx context.Context, tx sip.ServerTransaction, req *sip.Request) (store.User, bool) {
	from := req.From()
	fromAOR, _, fromDomain, err := ParseAOR("sip:" + from.Address.User + "@" + from.Address.Host)
	if _, home := a.digest.Realms()[fromDomain]; err != nil || !home {
		a.refuse(tx, req, 403, "Forbidden (sender is not a user of a home domain)", "foreign_sender")
		return store.User{}, false
	}
	user, ok := a.authenticate(ctx, tx, req, fromDomain, true)
	if !ok {
		return store.User{}, false
	}
	if user.AOR != fromAOR {
		a.refuse(tx, req, 403, "Forbidden (From is not the authenticated user)", "from_mismatch")
		return store.User{}, false
	}
	return user, true
}

// authenticateWith checks the request's digest credentials against the HA1
// that ha1 gives (a user's, or one made from a conference key), or answers
// the request (challenge, stale challenge, 400) and returns false.
func (a *authenticator) authenticateWith(tx sip.ServerTransaction, req *sip.Request, realm string, proxy bool, ha1 func(username, realm, alg string) (string, error)) bool {
	name := "Authorization"
	if proxy {
		name = "Proxy-Authorization"
	}
	h := req.GetHeader(name)
	if h == nil {
		a.challenge(tx, req, realm, proxy, false, "")
		return false
	}
	p, err := access.ParseDigest(h.Value())
	if err != nil {
		a.refuse(tx, req, 400, "Bad Request (malformed "+name+")", "malformed_authorization")
		return false
	}
	err = a.digest.Verify(p, string(req.Method), ha1)
	switch {
	case err == nil:
		return true
	case errors.Is(err, access.ErrDigestStale):
		a.challenge(tx, req, realm, proxy, true, "")
	case errors.Is(err, access.ErrDigestQOP):
		a.refuse(tx, req, 400, `Bad Request (qop="auth" with nc and cnonce required)`, "bad_qop")
	default:
		a.challenge(tx, req, realm, proxy, false, digestReason(err))
	}
	return false
}

// registrar serves REGISTER for the home domains (RFC 3261 §10.3).
type registrar struct {
	*authenticator
	flow     func(source string) string // sipnode.Node.Flow
	cfg      RegistrarConfig
	aorLocks [64]sync.Mutex // lockAOR
}

func digestReason(err error) string {
	switch {
	case errors.Is(err, access.ErrDigestReplay):
		return "replayed_nonce_count"
	case errors.Is(err, access.ErrDigestResponse):
		return "wrong_password"
	case errors.Is(err, access.ErrDigestUnknown):
		return "unknown_user"
	case errors.Is(err, access.ErrDigestBadNonce):
		return "foreign_nonce"
	case errors.Is(err, access.ErrDigestAlgorithm):
		return "algorithm_not_allowed"
	case errors.Is(err, access.ErrDigestRealm):
		return "wrong_realm"
	}
	return "digest_failed"
}

// register follows RFC 3261 §10.3.
func (r *registrar) register(peer *access.PeerIdentity, req *sip.Request, tx sip.ServerTransaction) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Steps 1-3: the request-URI names a domain this registrar serves.
	if _, home := r.digest.Realms()[strings.ToLower(req.Recipient.Host)]; !home {
		r.refuse(tx, req, 403, "Forbidden (not a home domain)", "foreign_domain")
		return
	}
	to := req.To()
	aor, _, domain, err := ParseAOR("sip:" + to.Address.User + "@" + to.Address.Host)
	if err != nil || domain != strings.ToLower(req.Recipient.Host) {
		r.refuse(tx, req, 400, "Bad Request (To is not an address of record of this domain)", "bad_to")
		return
	}
	// Step 4: authenticate; step 5: the user may register this AOR only.
	user, ok := r.authenticate(ctx, tx, req, domain, false)
	if !ok {
		return
	}
	if user.AOR != aor {
		r.refuse(tx, req, 403, "Forbidden (credentials are for another address of record)", "aor_mismatch")
		return
	}
	// A Path (RFC 3327) is honoured only from a trusted edge: a user cannot
	// choose the route to themselves.
	var path string
	if peer.Name != "" {
		var hops []string
		for _, h := range req.GetHeaders("Path") {
			hops = append(hops, h.Value())
		}
		path = strings.Join(hops, ",")
	}
	// Step 6: the Contact list.
	contacts := req.GetHeaders("Contact")
	defaultExp := r.cfg.DefaultExpires
	if h := req.GetHeader("Expires"); h != nil {
		n, err := strconv.ParseUint(strings.TrimSpace(h.Value()), 10, 32)
		if err != nil {
			r.refuse(tx, req, 400, "Bad Request (Expires)", "bad_expires")
			return
		}
		defaultExp = time.Duration(n) * time.Second
	}
	now := time.Now()
	for _, h := range contacts {
		c, ok := h.(*sip.ContactHeader)
		if !ok {
			r.refuse(tx, req, 400, "Bad Request (Contact)", "bad_contact")
			return
		}
		if c.Address.Wildcard {
			// "*" only alone and with Expires: 0 (§10.3 step 6).
			if len(contacts) != 1 || req.GetHeader("Expires") == nil || defaultExp != 0 {
				r.refuse(tx, req, 400, "Bad Request (Contact: * needs Expires: 0 and no other Contact)", "bad_wildcard")
				return
			}
			if err := r.st.DeleteBindings(ctx, aor); err != nil {
				r.fail(tx, req, err)
				return
			}
			r.log.Info("unregistered all", "aor", aor)
			r.ok(ctx, tx, req, aor)
			return
		}
	}
	changes := make([]change, 0, len(contacts))
	for _, h := range contacts {
		c := h.(*sip.ContactHeader)
		exp := defaultExp
		if v, ok := c.Params.Get("expires"); ok {
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				r.refuse(tx, req, 400, "Bad Request (Contact expires)", "bad_expires")
				return
			}
			exp = time.Duration(n) * time.Second
		}
		if exp > 0 && exp < r.cfg.MinExpires {
			r.refuse(tx, req, 423, "Interval Too Brief", "interval_too_brief",
				sip.NewHeader("Min-Expires", strconv.Itoa(int(r.cfg.MinExpires/time.Second))))
			return
		}
		changes = append(changes, change{contact: c.Address.String(), expires: min(exp, r.cfg.MaxExpires)})
	}
	// Step 7, one REGISTER of an address of record at a time: two read
	// and checked side by side would each make room for their own new
	// contact in the same place, or each pass the CSeq check.
	unlock := r.lockAOR(aor)
	no, err := r.apply(ctx, req, aor, changes, now, path)
	unlock()
	if err != nil {
		r.fail(tx, req, err)
		return
	}
	if no != nil {
		r.refuse(tx, req, no.code, no.reason, no.why, no.hdrs...)
		return
	}
	if len(changes) > 0 {
		r.log.Info("registered", "aor", aor, "contacts", len(changes), "edge", peer.Name, "source", req.Source())
	}
	// Step 8: 200 with every current binding.
	r.ok(ctx, tx, req, aor)
}

// refusal is an answer that apply chose, sent once the AOR is unlocked.
type refusal struct {
	code        int
	reason, why string
	hdrs        []sip.Header
}

// change is one Contact of a REGISTER: its binding's new lifetime (0:
// remove it).
type change struct {
	contact string
	expires time.Duration
}

// apply is §10.3 step 7 for one address of record, under its lock.
func (r *registrar) apply(ctx context.Context, req *sip.Request, aor string, changes []change, now time.Time, path string) (*refusal, error) {
	// Refuse an out-of-order update of a binding from the same Call-ID;
	// past max_contacts the oldest other bindings make room (a REGISTER
	// that adds none is let through, so that a lowered cap does not stop
	// refreshes). Everything is checked before anything is changed.
	callID, cseq := req.CallID().Value(), req.CSeq().SeqNo
	current, err := r.st.Bindings(ctx, aor, now)
	if err != nil {
		return nil, err
	}
	after := make(map[string]bool, len(current)+len(changes))
	for _, b := range current {
		after[b.Contact] = true
	}
	for _, ch := range changes {
		if i := slices.IndexFunc(current, func(b store.Binding) bool { return b.Contact == ch.contact }); i >= 0 {
			if b := current[i]; b.CallID == callID && cseq <= b.CSeq {
				return &refusal{500, "Server Internal Error (CSeq out of order)", "cseq_out_of_order", []sip.Header{sip.NewHeader("Retry-After", "5")}}, nil
			}
		}
		after[ch.contact] = ch.expires > 0
	}
	n := 0
	for _, bound := range after {
		if bound {
			n++
		}
	}
	var evict []string
	if n > r.cfg.MaxContacts && n > len(current) {
		// Room is made by dropping the bindings this REGISTER does not
		// name, the one that expires soonest first (a client that comes
		// back with a new contact after each reconnect must not lock its
		// user out until the old ones expire); a REGISTER that names more
		// contacts than the cap by itself is refused.
		old := slices.DeleteFunc(slices.Clone(current), func(b store.Binding) bool {
			return slices.ContainsFunc(changes, func(ch change) bool { return ch.contact == b.Contact })
		})
		slices.SortFunc(old, func(a, b store.Binding) int { return a.Expires.Compare(b.Expires) })
		for _, b := range old {
			if n <= r.cfg.MaxContacts {
				break
			}
			evict = append(evict, b.Contact)
			n--
		}
		if n > r.cfg.MaxContacts {
			return &refusal{403, "Forbidden (more than " + strconv.Itoa(r.cfg.MaxContacts) + " contacts for one address of record)", "too_many_contacts", nil}, nil
		}
	}
	for _, contact := range evict {
		if err := r.st.DeleteBinding(ctx, aor, contact); err != nil {
			return nil, err
		}
		r.log.Info("binding dropped to keep max_contacts", "aor", aor, "contact", contact, "max_contacts", r.cfg.MaxContacts)
	}
	for _, ch := range changes {
		if ch.expires == 0 {
			err = r.st.DeleteBinding(ctx, aor, ch.contact)
		} else {
			err = r.st.PutBinding(ctx, store.Binding{AOR: aor, Contact: ch.contact, CallID: callID, CSeq: cseq,
				Expires: now.Add(ch.expires), Source: req.Transport() + ":" + r.flow(req.Source()), Path: path})
		}
		if err != nil {
			return nil, err
		}
	}
	return nil, nil
}

// lockAOR serialises the REGISTERs of one address of record (step 7).
// The locks are striped: AORs that share a stripe wait for each other
// only while the store is read and written, never while answering.
func (r *registrar) lockAOR(aor string) (unlock func()) {
	h := uint32(2166136261) // FNV-1a
	for i := 0; i < len(aor); i++ {
		h = (h ^ uint32(aor[i])) * 16777619
	}
	mu := &r.aorLocks[h%uint32(len(r.aorLocks))]
	mu.Lock()
	return mu.Unlock
}

func (r *registrar) ok(ctx context.Context, tx sip.ServerTransaction, req *sip.Request, aor string) {
	now := time.Now()
	bindings, err := r.st.Bindings(ctx, aor, now)
	if err != nil {
		r.fail(tx, req, err)
		return
	}
	hdrs := []sip.Header{sip.NewHeader("Date", now.UTC().Format(time.RFC1123))}
	for _, b := range bindings {
		secs := int(math.Ceil(b.Expires.Sub(now).Seconds())) // the store keeps whole seconds
		hdrs = append(hdrs, sip.NewHeader("Contact", fmt.Sprintf("<%s>;expires=%d", b.Contact, max(secs, 1))))
	}
	r.respond(tx, req, 200, "OK", hdrs...)
}

func (r *registrar) fail(tx sip.ServerTransaction, req *sip.Request, err error) {
	r.log.Error("registrar store error", "error", err)
	r.respond(tx, req, 500, "Server Internal Error", sip.NewHeader("Retry-After", "5"))
}

// sweep removes expired bindings until ctx ends.
func (r *registrar) sweep(ctx context.Context, every time.Duration) {
	lifecycle.Every(ctx, every, func(now time.Time) {
		if n, err := r.st.DeleteExpired(ctx, now); err != nil && ctx.Err() == nil {
			r.log.Warn("binding cleanup failed", "error", err)
		} else if n > 0 {
			r.log.Info("expired bindings removed", "count", n)
		}
	})
}
