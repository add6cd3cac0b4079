package policy_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"portcullis/internal/testdns"
	"portcullis/policy"
)

func fedConfig(resolver string) policy.FederationConfig {
	c := policy.DefaultFederationConfig()
	c.AllowFederation = true
	c.TrustRootsFile = "roots.pem"
	c.Resolver = resolver
	c.Partners = []policy.PartnerConfig{
		{Domain: "partner.test", Edge: "203.0.113.130:5061"},
		{Domain: "loose.test", Edge: "203.0.113.131:5061", Verification: "unverified"},
		{Domain: "srv.test"},
	}
	c.BlockedDomains = []string{"blocked.test"}
	return c
}

func TestFederationAdmit(t *testing.T) {
	dns, err := testdns.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dns.Close()
	if err := dns.Add(
		"_sipfederationtls._tcp.found.test. 60 IN SRV 0 0 5061 sip.found.test.",
		"_sipfederationtls._tcp.blocked.test. 60 IN SRV 0 0 5061 sip.blocked.test.",
		"_sipfederationtls._tcp.srv.test. 60 IN SRV 10 0 5061 b.srv.test.",
		"_sipfederationtls._tcp.srv.test. 60 IN SRV 5 0 5062 a.srv.test.",
		"a.srv.test. 60 IN A 203.0.113.140",
		"b.srv.test. 60 IN A 203.0.113.141",
	); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c := fedConfig(dns.Addr())
	f := policy.NewFederation(c)

	p, err := f.Admit(ctx, "Partner.TEST")
	if err != nil || p.Kind != policy.DirectPartner || !p.Verified || p.Edge != "203.0.113.130:5061" {
		t.Fatalf("table partner: %+v %v", p, err)
	}
	if p, _ := f.Admit(ctx, "loose.test"); p.Verified {
		t.Fatal("unverified partner admitted as verified")
	}
	if _, err := f.Admit(ctx, "blocked.test"); !errors.Is(err, policy.ErrBlockedDomain) {
		t.Fatalf("blocked: %v", err)
	}
	if _, err := f.Admit(ctx, "found.test"); !errors.Is(err, policy.ErrNotPartner) {
		t.Fatalf("discovery off: %v", err)
	}
	// Targets in RFC 2782 order: priority 5 before 10.
	ts, err := f.Targets(ctx, policy.Partner{Domain: "srv.test"})
	if err != nil || len(ts) != 2 || ts[0].Addr != "203.0.113.140:5062" || ts[0].Name != "a.srv.test" || ts[1].Addr != "203.0.113.141:5061" {
		t.Fatalf("srv targets: %+v %v", ts, err)
	}

	c.Discovery.Enabled = true
	f.Set(c)
	p, err = f.Admit(ctx, "found.test")
	if err != nil || p.Kind != policy.AutoFederation || p.Verified {
		t.Fatalf("discovered: %+v %v", p, err)
	}
	// Blocked even when discovered; no SRV: refused.
	if _, err := f.Admit(ctx, "blocked.test"); !errors.Is(err, policy.ErrBlockedDomain) {
		t.Fatalf("blocked and discoverable: %v", err)
	}
	if _, err := f.Admit(ctx, "nowhere.test"); !errors.Is(err, policy.ErrNotDiscovered) {
		t.Fatalf("undiscoverable: %v", err)
	}
	// Answers and failures are cached: asking again does not ask the server.
	before := dns.Queries("_sipfederationtls._tcp.found.test")
	beforeMiss := dns.Queries("_sipfederationtls._tcp.nowhere.test")
	f.Admit(ctx, "found.test")
	f.Admit(ctx, "nowhere.test")
	if dns.Queries("_sipfederationtls._tcp.found.test") != before || dns.Queries("_sipfederationtls._tcp.nowhere.test") != beforeMiss {
		t.Fatal("DNS answers not cached")
	}

	c.AllowFederation = false
	f.Set(c)
	if _, err := f.Admit(ctx, "partner.test"); !errors.Is(err, policy.ErrFederationOff) {
		t.Fatalf("federation off: %v", err)
	}
}

func TestDiscoveredLimits(t *testing.T) {
	c := fedConfig("127.0.0.1:1")
	c.Discovery.RequestsPerSecond, c.Discovery.Burst, c.Discovery.MaxContacts = 1000, 1000, 3
	f := policy.NewFederation(c)
	for _, u := range []string{"sip:a@example.test", "sip:b@example.test", "sip:c@example.test", "sip:A@example.test"} {
		if err := f.AllowDiscovered("found.test", u); err != nil {
			t.Fatalf("%s: %v", u, err)
		}
	}
	if err := f.AllowDiscovered("found.test", "sip:d@example.test"); !errors.Is(err, policy.ErrContactCap) {
		t.Fatalf("fourth contact: %v", err)
	}
	if err := f.AllowDiscovered("other.test", "sip:d@example.test"); err != nil {
		t.Fatalf("other domain has its own cap: %v", err)
	}
	c.Discovery.RequestsPerSecond, c.Discovery.Burst = 1, 2
	f.Set(c)
	var limited int
	for range 10 {
		if errors.Is(f.AllowDiscovered("found.test", "sip:a@example.test"), policy.ErrDiscoveredRate) {
			limited++
		}
	}
	if limited < 7 {
		t.Fatalf("rate limit let %d of 10 through", 10-limited)
	}
}

// A discovered domain that reached max_contacts stays capped when as many
// other domains show up as the state holds (their state made room by
// dropping everyone's counters, so cycling through domains restarted the
// enumeration).
func TestDiscoveredCapSurvivesManyDomains(t *testing.T) {
	c := fedConfig("127.0.0.1:1")
	c.Discovery.RequestsPerSecond, c.Discovery.Burst, c.Discovery.MaxContacts = 1000, 1000, 3
	f := policy.NewFederation(c)
	for _, u := range []string{"sip:a@example.test", "sip:b@example.test", "sip:c@example.test"} {
		if err := f.AllowDiscovered("enum.test", u); err != nil {
			t.Fatalf("%s: %v", u, err)
		}
	}
	for i := range 10100 {
		if err := f.AllowDiscovered("d"+strconv.Itoa(i)+".test", "sip:a@example.test"); err != nil {
			t.Fatalf("domain %d: %v", i, err)
		}
	}
	if err := f.AllowDiscovered("enum.test", "sip:d@example.test"); !errors.Is(err, policy.ErrContactCap) {
		t.Fatalf("a fourth contact after 10,100 other domains: %v, want the cap", err)
	}
}

func TestDomainNamedBy(t *testing.T) {
	for _, c := range []struct {
		names  []string
		domain string
		want   bool
	}{
		{[]string{"partner.test"}, "partner.test", true},
		{[]string{"sip.partner.test"}, "Partner.Test", true},
		{[]string{"partner.test.evil.test"}, "partner.test", false},
		{[]string{"evilpartner.test"}, "partner.test", false},
		{[]string{"*.partner.test"}, "partner.test", false},
		{nil, "partner.test", false},
	} {
		if got := policy.DomainNamedBy(c.names, c.domain); got != c.want {
			t.Errorf("%v for %s: %v", c.names, c.domain, got)
		}
	}
}

func TestResolverNegativeTTL(t *testing.T) {
	dns, err := testdns.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dns.Close()
	r := policy.NewResolver(dns.Addr(), time.Second, 50*time.Millisecond)
	ctx := context.Background()
	if _, err := r.SRV(ctx, "_sipfederationtls._tcp.late.test."); err == nil {
		t.Fatal("no record, no error")
	}
	dns.Add("_sipfederationtls._tcp.late.test. 60 IN SRV 0 0 5061 sip.late.test.")
	if _, err := r.SRV(ctx, "_sipfederationtls._tcp.late.test."); err == nil {
		t.Fatal("failure not cached")
	}
	time.Sleep(80 * time.Millisecond)
	if s, err := r.SRV(ctx, "_sipfederationtls._tcp.late.test."); err != nil || s[0].Host != "sip.late.test" {
		t.Fatalf("after the negative TTL: %v %v", s, err)
	}
}
