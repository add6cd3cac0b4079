package policy

import (
	"cmp"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// SourceLimiter is a token bucket per source (Source: an IPv4 address or
// an IPv6 /64). Its state is per source (never per request) and bounded:
// past maxSources it forgets the quarter of the sources with the most
// tokens left (evict).
type SourceLimiter struct {
	mu    sync.Mutex
	limit rate.Limit
	burst int
	m     map[netip.Addr]*rate.Limiter
}

const maxSources = 65536

// NewSourceLimiter allows limit events per second per source, with burst.
// rate.Inf allows everything.
func NewSourceLimiter(limit rate.Limit, burst int) *SourceLimiter {
	return &SourceLimiter{limit: limit, burst: burst, m: map[netip.Addr]*rate.Limiter{}}
}

// Allow reports whether one more event from a is within its rate.
func (s *SourceLimiter) Allow(a netip.Addr) bool {
	if s.limit == rate.Inf {
		return true
	}
	a = Source(a)
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.m[a]
	if l == nil {
		if len(s.m) >= maxSources {
			s.evict(time.Now())
		}
		l = rate.NewLimiter(s.limit, s.burst)
		s.m[a] = l
	}
	return l.Allow()
}

// evict forgets the quarter of the sources whose buckets hold the most
// tokens (under s.mu): full ones first, which a new bucket would equal.
// Sources that spent theirs are kept, so that a flood of new sources does
// not hand them a fresh burst (forgetting every source did).
func (s *SourceLimiter) evict(now time.Time) {
	type source struct {
		a      netip.Addr
		tokens float64
	}
	all := make([]source, 0, len(s.m))
	for a, l := range s.m {
		all = append(all, source{a, l.TokensAt(now)})
	}
	slices.SortFunc(all, func(x, y source) int { return cmp.Compare(y.tokens, x.tokens) })
	for _, x := range all[:len(all)/4] {
		delete(s.m, x.a)
	}
}

// Source is what per-source limits count by: an IPv4 address, or the /64
// of an IPv6 one. One IPv6 subscriber holds a whole /64 and can send from
// any address in it, so counting by address would give them billions of
// buckets.
func Source(a netip.Addr) netip.Addr {
	a = a.Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}
