// Package policy holds decisions, not transport. This file: which peer
// addresses the media relay may reach.
package policy

import (
	"fmt"
	"net/netip"
)

// DefaultDeniedPeers are the ranges a relay must not reach unless an allowed
// range says otherwise (PROTOCOLS.md, after coturn, eturnal and LiveKit):
// this-network, loopback, private, shared, link-local, IETF protocol
// assignments, documentation, 6to4 relay, benchmarking, multicast, reserved,
// and their IPv6 counterparts.
var DefaultDeniedPeers = []string{
	"0.0.0.0/8", "127.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16",
	"172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
	"198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
	"::/128", "::1/128", "64:ff9b::/96", "100::/64", "fc00::/7", "fe80::/10", "ff00::/8",
}

// PeerPolicy decides whether the relay may send to a peer address. Allowed
// ranges (the internal MCU media range) override denied ones; anything in
// neither list is allowed (a public address).
type PeerPolicy struct {
	allowed []netip.Prefix
	denied  []netip.Prefix
}

// NewPeerPolicy builds a policy from the default denied ranges plus extra
// ones, and the allowed ranges. Ranges are CIDR strings.
func NewPeerPolicy(allowed, extraDenied []string) (*PeerPolicy, error) {
	p := &PeerPolicy{}
	var err error
	if p.allowed, err = ParsePrefixes(allowed); err != nil {
		return nil, err
	}
	if p.denied, err = ParsePrefixes(append(append([]string{}, DefaultDeniedPeers...), extraDenied...)); err != nil {
		return nil, err
	}
	return p, nil
}

// ParsePrefixes parses CIDR strings (a bare address is a /32 or /128).
func ParsePrefixes(ss []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("%q is not an address range (CIDR) or address", s)
			}
			pfx = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, pfx.Masked())
	}
	return out, nil
}

// Reason says why a peer was refused.
type Reason string

const (
	Allowed     Reason = ""
	DeniedRange Reason = "denied_range"
	Unspecified Reason = "invalid_address"
)

// Check returns Allowed or the reason the address is refused. An IPv4
// address written as IPv4-mapped IPv6 (::ffff:10.0.0.1) is judged as the
// IPv4 address it is.
func (p *PeerPolicy) Check(ip netip.Addr) Reason {
	if !ip.IsValid() {
		return Unspecified
	}
	ip = ip.Unmap().WithZone("")
	for _, pfx := range p.allowed {
		if pfx.Contains(ip) {
			return Allowed
		}
	}
	for _, pfx := range p.denied {
		if pfx.Contains(ip) {
			return DeniedRange
		}
	}
	return Allowed
}
