// This file: DNS for partner discovery (RFC 3263 §4.2, RFC 2782), asked of
// one configured server, with answers cached for their TTL and failures
// for a short while.

package policy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// ErrNoRecords is returned for a name with no records of the type asked.
var ErrNoRecords = errors.New("no records")

// SRVTarget is one SRV record's target.
type SRVTarget struct {
	Priority, Weight uint16
	Port             uint16
	Host             string // without the trailing dot
}

// Resolver asks one DNS server over UDP (TCP when truncated) and caches.
type Resolver struct {
	server      string
	timeout     time.Duration
	negativeTTL time.Duration
	now         func() time.Time

	mu    sync.Mutex
	cache map[cacheKey]cacheEntry
}

type cacheKey struct {
	name  string
	qtype uint16
}

type cacheEntry struct {
	srv     []SRVTarget
	addrs   []netip.Addr
	err     error
	expires time.Time
}

// maxCached bounds the cache; past it, it starts again empty.
const maxCached = 10000

// NewResolver asks server (host:port).
func NewResolver(server string, timeout, negativeTTL time.Duration) *Resolver {
	return &Resolver{server: server, timeout: timeout, negativeTTL: negativeTTL, now: time.Now, cache: map[cacheKey]cacheEntry{}}
}

// SRV returns the SRV records of name (fully qualified).
func (r *Resolver) SRV(ctx context.Context, name string) ([]SRVTarget, error) {
	e, err := r.lookup(ctx, dns.Fqdn(name), dns.TypeSRV)
	return e.srv, err
}

// Addrs returns the IPv4 and IPv6 addresses of host.
func (r *Resolver) Addrs(ctx context.Context, host string) ([]netip.Addr, error) {
	a, errA := r.lookup(ctx, dns.Fqdn(host), dns.TypeA)
	aaaa, errAAAA := r.lookup(ctx, dns.Fqdn(host), dns.TypeAAAA)
	out := append(append([]netip.Addr{}, a.addrs...), aaaa.addrs...)
	if len(out) == 0 {
		return nil, errors.Join(errA, errAAAA)
	}
	return out, nil
}

func (r *Resolver) lookup(ctx context.Context, name string, qtype uint16) (cacheEntry, error) {
	key := cacheKey{strings.ToLower(name), qtype}
	r.mu.Lock()
	e, ok := r.cache[key]
	r.mu.Unlock()
	if ok && r.now().Before(e.expires) {
		return e, e.err
	}
	e = r.query(ctx, key.name, qtype)
	r.mu.Lock()
	if len(r.cache) >= maxCached {
		clear(r.cache)
	}
	r.cache[key] = e
	r.mu.Unlock()
	return e, e.err
}

// query asks the server; the entry carries its own expiry (the smallest
// TTL of the answer, or the negative TTL for a failure).
func (r *Resolver) query(ctx context.Context, name string, qtype uint16) cacheEntry {
	fail := func(err error) cacheEntry {
		return cacheEntry{err: fmt.Errorf("%s %s: %w", dns.TypeToString[qtype], name, err), expires: r.now().Add(r.negativeTTL)}
	}
	if r.server == "" {
		return fail(errors.New("no resolver configured"))
	}
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = true
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	c := &dns.Client{Net: "udp", Timeout: r.timeout}
	in, _, err := c.ExchangeContext(ctx, m, r.server)
	if err == nil && in.Truncated {
		c.Net = "tcp"
		in, _, err = c.ExchangeContext(ctx, m, r.server)
	}
	if err != nil {
		return fail(err)
	}
	if in.Rcode != dns.RcodeSuccess {
		return fail(fmt.Errorf("%s", dns.RcodeToString[in.Rcode]))
	}
	e := cacheEntry{}
	ttl := uint32(3600)
	for _, rr := range in.Answer {
		switch v := rr.(type) {
		case *dns.SRV:
			if qtype == dns.TypeSRV && v.Target != "." {
				e.srv = append(e.srv, SRVTarget{Priority: v.Priority, Weight: v.Weight, Port: v.Port, Host: strings.TrimSuffix(v.Target, ".")})
				ttl = min(ttl, v.Hdr.Ttl)
			}
		case *dns.A:
			if a, ok := netip.AddrFromSlice(v.A.To4()); ok && qtype == dns.TypeA {
				e.addrs = append(e.addrs, a)
				ttl = min(ttl, v.Hdr.Ttl)
			}
		case *dns.AAAA:
			if a, ok := netip.AddrFromSlice(v.AAAA); ok && qtype == dns.TypeAAAA {
				e.addrs = append(e.addrs, a)
				ttl = min(ttl, v.Hdr.Ttl)
			}
		}
	}
	if len(e.srv) == 0 && len(e.addrs) == 0 {
		return fail(ErrNoRecords)
	}
	e.expires = r.now().Add(time.Duration(max(ttl, 1)) * time.Second)
	return e
}

// OrderSRV sorts targets as RFC 2782 says: lowest priority first; within a
// priority, a weighted random order (weight 0 entries last but possible).
func OrderSRV(in []SRVTarget) []SRVTarget {
	rest := slices.Clone(in)
	slices.SortStableFunc(rest, func(a, b SRVTarget) int { return int(a.Priority) - int(b.Priority) })
	var out []SRVTarget
	for len(rest) > 0 {
		n := 1
		for n < len(rest) && rest[n].Priority == rest[0].Priority {
			n++
		}
		group := rest[:n]
		for len(group) > 0 {
			total := 0
			for _, t := range group {
				total += int(t.Weight) + 1
			}
			pick, x := 0, rand.IntN(total)
			for i, t := range group {
				if x -= int(t.Weight) + 1; x < 0 {
					pick = i
					break
				}
			}
			out = append(out, group[pick])
			group = slices.Delete(group, pick, pick+1)
		}
		rest = rest[n:]
	}
	return out
}
