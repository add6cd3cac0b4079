package policy

import (
	"net/netip"
	"sync"

	"golang.org/x/time/rate"
)

// SourceLimiter is a token bucket per source address. Its state is per
// source (never per request) and bounded: past maxSources it starts over
// rather than grow.
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
	a = a.Unmap()
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.m[a]
	if l == nil {
		if len(s.m) >= maxSources {
			clear(s.m)
		}
		l = rate.NewLimiter(s.limit, s.burst)
		s.m[a] = l
	}
	return l.Allow()
}
