// This file: who may federate with the home domains, and how a partner's
// edge is found.

package policy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"portcullis/internal/config"
)

// Federation errors, mapped to SIP answers by the edge.
var (
	ErrFederationOff   = errors.New("federation is off")
	ErrBlockedDomain   = errors.New("domain is blocked")
	ErrNotPartner      = errors.New("domain is not a partner and discovery is off")
	ErrNotDiscovered   = errors.New("domain publishes no federation SRV record")
	ErrDiscoveredRate  = errors.New("discovered partner over its request rate")
	ErrContactCap      = errors.New("discovered partner over its cap of distinct contacts")
	ErrRemoteUsersOff  = errors.New("remote user access is off")
	ErrNoPartnerTarget = errors.New("no address for the partner's edge")
)

// FederationConfig is the edge's `federation` section (reloadable).
type FederationConfig struct {
	// AllowRemoteUsers, AllowFederation and AllowAnonymous switch each kind
	// of outside user on or off.
	AllowRemoteUsers bool `yaml:"allow_remote_users"`
	AllowFederation  bool `yaml:"allow_federation"`
	AllowAnonymous   bool `yaml:"allow_anonymous"`
	// TrustRootsFile holds the CA certificates partner edges' certificates
	// must chain to (PEM). Required when federation is on.
	TrustRootsFile string          `yaml:"trust_roots_file"`
	Partners       []PartnerConfig `yaml:"partners"`
	// BlockedDomains are always refused, even when discovered.
	BlockedDomains []string        `yaml:"blocked_domains"`
	Discovery      DiscoveryConfig `yaml:"discovery"`
	// Resolver is the DNS server (host:port) asked for SRV and address
	// records of partners; required when discovery is on or a partner's edge
	// is given by name.
	Resolver string `yaml:"resolver"`
	// KeepaliveInterval: connections to partners' edges used in the last
	// ten minutes get an RFC 5626 CRLF ping this often (so that idle
	// timeouts and firewalls on the way do not close them).
	KeepaliveInterval time.Duration `yaml:"keepalive_interval"`
}

// PartnerConfig is one row of the partner table.
type PartnerConfig struct {
	Domain string `yaml:"domain"`
	// Edge is the partner's edge, host:port; empty: found through DNS SRV.
	Edge string `yaml:"edge"`
	// Verification is "verified" (the partner vouches for its users'
	// identity) or "unverified".
	Verification string `yaml:"verification"`
}

// DiscoveryConfig sets partner discovery through DNS SRV
// `_sipfederationtls._tcp.<domain>` and the limits on discovered partners.
type DiscoveryConfig struct {
	Enabled           bool          `yaml:"enabled"`
	RequestsPerSecond float64       `yaml:"requests_per_second"`
	Burst             int           `yaml:"burst"`
	MaxContacts       int           `yaml:"max_contacts"`
	ContactWindow     time.Duration `yaml:"contact_window"`
	NegativeTTL       time.Duration `yaml:"negative_ttl"`
	Timeout           time.Duration `yaml:"timeout"`
}

// DefaultFederationConfig: remote users on; federation, discovery and
// anonymous users off until the operator turns them on.
func DefaultFederationConfig() FederationConfig {
	return FederationConfig{
		AllowRemoteUsers:  true,
		KeepaliveInterval: 30 * time.Second,
		Discovery: DiscoveryConfig{RequestsPerSecond: 20, Burst: 20, MaxContacts: 1000, ContactWindow: 24 * time.Hour,
			NegativeTTL: 30 * time.Second, Timeout: 2 * time.Second},
	}
}

// Validate checks the section.
func (c *FederationConfig) Validate(v *config.V) {
	if c.AllowFederation {
		v.CheckNotEmpty("trust_roots_file", c.TrustRootsFile)
	}
	seen := map[string]bool{}
	needResolver := c.Discovery.Enabled
	for i, p := range c.Partners {
		pv := v.In("partners[" + config.Itoa(i) + "]")
		pv.Check(validDomain(p.Domain), "domain", "must be a domain name, got %q", p.Domain)
		pv.Check(!seen[strings.ToLower(p.Domain)], "domain", "%q is listed twice", p.Domain)
		seen[strings.ToLower(p.Domain)] = true
		if p.Edge != "" {
			pv.CheckHostPort("edge", p.Edge, false)
			if h, _, err := net.SplitHostPort(p.Edge); err == nil {
				if _, err := netip.ParseAddr(h); err != nil {
					needResolver = true
				}
			}
		} else {
			needResolver = true
		}
		pv.Check(p.Verification == "" || p.Verification == "verified" || p.Verification == "unverified", "verification", "must be verified or unverified, got %q", p.Verification)
	}
	for i, d := range c.BlockedDomains {
		v.Check(validDomain(d), "blocked_domains["+config.Itoa(i)+"]", "must be a domain name, got %q", d)
		v.Check(!seen[strings.ToLower(d)], "blocked_domains["+config.Itoa(i)+"]", "%q is also a partner", d)
	}
	if c.AllowFederation && needResolver {
		v.CheckHostPort("resolver", c.Resolver, false)
	}
	v.Check(c.KeepaliveInterval >= 100*time.Millisecond && c.KeepaliveInterval <= 10*time.Minute, "keepalive_interval", "must be between 100ms and 10m, got %s", c.KeepaliveInterval)
	d, dv := c.Discovery, v.In("discovery")
	dv.Check(d.RequestsPerSecond > 0, "requests_per_second", "must be positive")
	dv.Check(d.Burst >= 1, "burst", "must be at least 1")
	dv.Check(d.MaxContacts >= 1, "max_contacts", "must be at least 1")
	dv.Check(d.ContactWindow >= time.Minute, "contact_window", "must be at least 1m")
	dv.Check(d.NegativeTTL >= time.Second && d.NegativeTTL <= time.Hour, "negative_ttl", "must be between 1s and 1h")
	dv.Check(d.Timeout > 0 && d.Timeout <= 30*time.Second, "timeout", "must be between 0s and 30s")
}

func validDomain(d string) bool {
	if d == "" || len(d) > 253 || strings.HasPrefix(d, ".") || strings.HasSuffix(d, ".") || !strings.Contains(d, ".") {
		return false
	}
	for _, r := range d {
		if !(r == '.' || r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

// PartnerKind says how a partner is known.
type PartnerKind int

const (
	// DirectPartner is in the partner table.
	DirectPartner PartnerKind = iota + 1
	// AutoFederation was discovered through DNS SRV.
	AutoFederation
)

func (k PartnerKind) String() string {
	if k == DirectPartner {
		return "DirectPartner"
	}
	return "AutoFederation"
}

// Partner is an admitted federation peer.
type Partner struct {
	Domain   string
	Kind     PartnerKind
	Verified bool
	// Edge is the table's edge address ("" when found through SRV).
	Edge string
}

// Federation decides which domains federate, and finds their edges. Its
// configuration is swapped whole on reload.
type Federation struct {
	mu       sync.Mutex
	cfg      FederationConfig
	partners map[string]PartnerConfig
	blocked  map[string]bool
	dns      *Resolver
	limits   map[string]*discoveredState // per discovered domain
	now      func() time.Time
}

type discoveredState struct {
	rate     *rate.Limiter
	contacts map[string]struct{}
	since    time.Time
}

// maxDiscovered bounds the per-domain state of discovered partners.
const maxDiscovered = 10000

// NewFederation builds the policy from a validated section.
func NewFederation(c FederationConfig) *Federation {
	f := &Federation{limits: map[string]*discoveredState{}, now: time.Now}
	f.Set(c)
	return f
}

// Set swaps in a new configuration (reload). Discovered partners' counters
// start again; cached DNS answers are kept when the resolver is the same.
func (f *Federation) Set(c FederationConfig) {
	partners := map[string]PartnerConfig{}
	for _, p := range c.Partners {
		partners[strings.ToLower(p.Domain)] = p
	}
	blocked := map[string]bool{}
	for _, d := range c.BlockedDomains {
		blocked[strings.ToLower(d)] = true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dns == nil || f.cfg.Resolver != c.Resolver || f.cfg.Discovery.Timeout != c.Discovery.Timeout || f.cfg.Discovery.NegativeTTL != c.Discovery.NegativeTTL {
		f.dns = NewResolver(c.Resolver, c.Discovery.Timeout, c.Discovery.NegativeTTL)
	}
	f.cfg, f.partners, f.blocked = c, partners, blocked
	f.limits = map[string]*discoveredState{}
}

// Config is the configuration in force.
func (f *Federation) Config() FederationConfig {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cfg
}

// Admit decides whether domain may federate: a partner from the table, a
// domain discovered through SRV (when discovery is on), or an error saying
// why not. Blocked domains are refused even when listed or discovered.
func (f *Federation) Admit(ctx context.Context, domain string) (Partner, error) {
	domain = strings.ToLower(domain)
	f.mu.Lock()
	cfg, blocked, dns := f.cfg, f.blocked[domain], f.dns
	p, listed := f.partners[domain]
	f.mu.Unlock()
	switch {
	case !cfg.AllowFederation:
		return Partner{}, ErrFederationOff
	case blocked:
		return Partner{}, ErrBlockedDomain
	case listed:
		return Partner{Domain: domain, Kind: DirectPartner, Verified: p.Verification != "unverified", Edge: p.Edge}, nil
	case !cfg.Discovery.Enabled:
		return Partner{}, ErrNotPartner
	}
	if _, err := dns.SRV(ctx, SRVName(domain)); err != nil {
		return Partner{}, fmt.Errorf("%w: %v", ErrNotDiscovered, err)
	}
	// Discovered partners' users are not vouched for.
	return Partner{Domain: domain, Kind: AutoFederation}, nil
}

// SRVName is the federation SRV owner name of a domain.
func SRVName(domain string) string { return "_sipfederationtls._tcp." + strings.ToLower(domain) + "." }

// AllowDiscovered applies the limits on a discovered partner: its request
// rate, and the number of distinct home users (contact, an address of
// record) it has reached within the contact window.
func (f *Federation) AllowDiscovered(domain, contact string) error {
	domain, contact = strings.ToLower(domain), strings.ToLower(contact)
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.cfg.Discovery
	st := f.limits[domain]
	now := f.now()
	if st == nil || now.Sub(st.since) > d.ContactWindow {
		if len(f.limits) >= maxDiscovered {
			f.evictDiscovered(now)
		}
		st = &discoveredState{rate: rate.NewLimiter(rate.Limit(d.RequestsPerSecond), d.Burst), contacts: map[string]struct{}{}, since: now}
		f.limits[domain] = st
	}
	if !st.rate.AllowN(now, 1) {
		return ErrDiscoveredRate
	}
	if _, ok := st.contacts[contact]; !ok {
		if len(st.contacts) >= d.MaxContacts {
			return ErrContactCap
		}
		st.contacts[contact] = struct{}{}
	}
	return nil
}

// evictDiscovered makes room in the discovered partners' state (under
// f.mu): the domains whose window has ended go, or else the one that has
// reached the fewest contacts. Starting every domain's counters again
// would let a partner that hit max_contacts carry on enumerating after
// showing up from enough other domains.
func (f *Federation) evictDiscovered(now time.Time) {
	var fewest string
	for domain, st := range f.limits {
		if now.Sub(st.since) > f.cfg.Discovery.ContactWindow {
			delete(f.limits, domain)
		} else if fewest == "" || len(st.contacts) < len(f.limits[fewest].contacts) {
			fewest = domain
		}
	}
	if len(f.limits) >= maxDiscovered {
		delete(f.limits, fewest)
	}
}

// Targets lists where a partner's edge is, in the order to try (RFC 3263
// §4.2 and RFC 2782: SRV priority, then weight), as host:port addresses
// with the name each target's certificate is checked against.
func (f *Federation) Targets(ctx context.Context, p Partner) ([]Target, error) {
	f.mu.Lock()
	dns := f.dns
	f.mu.Unlock()
	var named []SRVTarget
	if p.Edge != "" {
		h, port, err := net.SplitHostPort(p.Edge)
		if err != nil {
			return nil, err
		}
		n, _ := strconv.Atoi(port)
		named = []SRVTarget{{Host: h, Port: uint16(n)}}
	} else {
		srv, err := dns.SRV(ctx, SRVName(p.Domain))
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrNoPartnerTarget, err)
		}
		named = OrderSRV(srv)
	}
	var out []Target
	for _, t := range named {
		if a, err := netip.ParseAddr(t.Host); err == nil {
			out = append(out, Target{Addr: netip.AddrPortFrom(a, t.Port).String(), Name: p.Domain})
			continue
		}
		addrs, err := dns.Addrs(ctx, t.Host)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			out = append(out, Target{Addr: netip.AddrPortFrom(a, t.Port).String(), Name: t.Host})
		}
	}
	if len(out) == 0 {
		return nil, ErrNoPartnerTarget
	}
	return out, nil
}

// Target is one address of a partner's edge.
type Target struct {
	Addr string // ip:port
	Name string // host name (TLS server name)
}

// Blocked reports whether domain is listed as blocked.
func (f *Federation) Blocked(domain string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.blocked[strings.ToLower(domain)]
}

// DomainNamedBy reports whether a certificate's DNS names speak for domain:
// the domain itself or a host under it (the partner's edge, e.g.
// sip.partner.test for partner.test). Wildcards are not honoured.
func DomainNamedBy(names []string, domain string) bool {
	domain = strings.ToLower(domain)
	return slices.ContainsFunc(names, func(n string) bool {
		n = strings.ToLower(n)
		return n == domain || strings.HasSuffix(n, "."+domain) && !strings.Contains(n, "*")
	})
}
