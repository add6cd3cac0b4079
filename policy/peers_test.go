package policy_test

import (
	"net/netip"
	"testing"

	"portcullis/policy"
)

func TestPeerPolicy(t *testing.T) {
	p, err := policy.NewPeerPolicy([]string{"203.0.113.0/26", "127.0.0.1"}, []string{"8.8.8.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]policy.Reason{
		"93.184.216.34":          policy.Allowed,     // public
		"203.0.113.10":           policy.Allowed,     // the MCU range, allowed over the documentation default
		"203.0.113.70":           policy.DeniedRange, // same /24, outside the allowed /26
		"127.0.0.1":              policy.Allowed,     // allowed exactly
		"127.0.0.2":              policy.DeniedRange,
		"10.1.2.3":               policy.DeniedRange,
		"::ffff:10.1.2.3":        policy.DeniedRange, // mapped form must not slip through
		"::ffff:203.0.113.10":    policy.Allowed,
		"172.31.255.255":         policy.DeniedRange,
		"100.64.0.1":             policy.DeniedRange,
		"169.254.169.254":        policy.DeniedRange, // cloud metadata
		"224.0.0.1":              policy.DeniedRange,
		"255.255.255.255":        policy.DeniedRange,
		"0.0.0.0":                policy.DeniedRange,
		"8.8.8.8":                policy.DeniedRange, // extra denied
		"::1":                    policy.DeniedRange,
		"::":                     policy.DeniedRange,
		"fe80::1%eth0":           policy.DeniedRange,
		"fd00::1":                policy.DeniedRange,
		"64:ff9b::a01:203":       policy.DeniedRange, // NAT64 of 10.1.2.3
		"2001:db8::1":            policy.Allowed,     // not in PROTOCOLS.md's list
		"2606:4700:4700::1111":   policy.Allowed,
		"ff02::1":                policy.DeniedRange,
		"::ffff:127.0.0.1":       policy.Allowed,
		"::ffff:169.254.169.254": policy.DeniedRange,
	} {
		if got := p.Check(netip.MustParseAddr(addr)); got != want {
			t.Errorf("%s: %q, want %q", addr, got, want)
		}
	}
	if p.Check(netip.Addr{}) != policy.Unspecified {
		t.Error("zero address allowed")
	}
	if _, err := policy.NewPeerPolicy([]string{"not-a-range"}, nil); err == nil {
		t.Error("bad range accepted")
	}
}
