package policy_test

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"portcullis/policy"
)

// IPv6 sources count by /64: addresses of one subscriber's network share a
// bucket, other networks have their own; IPv4 and IPv4-mapped forms are
// one source.
func TestSourceLimiterIPv6Prefix(t *testing.T) {
	l := policy.NewSourceLimiter(rate.Every(time.Hour), 2)
	for _, a := range []string{"2001:db8:1:2::1", "2001:db8:1:2:ffff::99"} {
		if !l.Allow(netip.MustParseAddr(a)) {
			t.Fatalf("%s: refused within the burst", a)
		}
	}
	if l.Allow(netip.MustParseAddr("2001:db8:1:2:1234::5")) {
		t.Fatal("a third address of the same /64 got past a burst of 2")
	}
	if !l.Allow(netip.MustParseAddr("2001:db8:1:3::1")) {
		t.Fatal("another /64 shares the bucket")
	}
	l.Allow(netip.MustParseAddr("198.51.100.7"))
	l.Allow(netip.MustParseAddr("::ffff:198.51.100.7"))
	if l.Allow(netip.MustParseAddr("198.51.100.7")) {
		t.Fatal("an IPv4 address and its mapped form are two sources")
	}
	if got := policy.Source(netip.MustParseAddr("fe80::1%eth0")); got != netip.MustParseAddr("fe80::") {
		t.Fatalf("Source(fe80::1%%eth0) = %s", got)
	}
}

// When the table is full, the sources with the most tokens left make room:
// a source that spent its burst is not given a new one because a flood of
// new sources showed up (the table used to start over).
func TestSourceLimiterFullKeepsSpentBuckets(t *testing.T) {
	l := policy.NewSourceLimiter(1, 5)
	spent := netip.MustParseAddr("198.51.100.66")
	for range 5 {
		l.Allow(spent)
	}
	base := netip.MustParseAddr("2001:db8::").As16()
	for i := range 70000 {
		b := base
		b[4], b[5], b[6] = byte(i>>16), byte(i>>8), byte(i)
		l.Allow(netip.AddrFrom16(b)) // a /64 each, with four tokens left
	}
	n := 0
	for range 5 {
		if l.Allow(spent) {
			n++
		}
	}
	if n > 1 {
		t.Fatalf("the spent source got %d of 5 after the table filled: its bucket was replaced", n)
	}
}
