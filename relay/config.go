// Package relay is the edge's STUN/TURN media relay (the A/V Edge) on
// pion/turn, with closed peer policy, REST credentials, quotas, bandwidth
// caps and a ChannelData fast path.
package relay

import (
	"net"
	"net/netip"
	"path/filepath"
	"time"

	"portcullis/internal/config"
	"portcullis/policy"
)

// Config is the edge's `turn` section.
type Config struct {
	Enabled bool   `yaml:"enabled"`
	Realm   string `yaml:"realm"`
	// SecretFile holds the shared secret for REST credentials (the core
	// issues credentials with the same secret).
	SecretFile string `yaml:"secret_file"`
	// PreviousSecretGrace is how long after a change of the secret the
	// credentials issued under the one before are still honoured: set it to
	// the core's turn.max_ttl, the longest a credential issued just before
	// the change can live (0: not at all).
	PreviousSecretGrace time.Duration `yaml:"previous_secret_grace"`

	ListenUDP   []string `yaml:"listen_udp"` // external address(es), STUN/TURN over UDP
	ListenTCP   []string `yaml:"listen_tcp"`
	ListenTLS   []string `yaml:"listen_tls"`
	TLSCertFile string   `yaml:"tls_cert_file"` // the public certificate for TURN over TLS
	TLSKeyFile  string   `yaml:"tls_key_file"`
	// UDPSockets is the number of SO_REUSEPORT sockets per UDP listen
	// address, and of the epoll loops that poll them and the relay sockets
	// (0: one per CPU).
	UDPSockets int `yaml:"udp_sockets"`

	Relay RelayConfig `yaml:"relay"`

	// AllowedPeers override the denied ranges: the internal MCU media range
	// and nothing else inside.
	AllowedPeers []string `yaml:"allowed_peers"`
	// DeniedPeers are denied in addition to the defaults of PROTOCOLS.md.
	DeniedPeers []string `yaml:"denied_peers"`

	Lifetimes LifetimeConfig  `yaml:"lifetimes"`
	Quota     QuotaConfig     `yaml:"quota"`
	Bandwidth BandwidthConfig `yaml:"bandwidth"`
	// AlternateServer (ip:port) is named in 300 Try Alternate answers when
	// this edge is at capacity or draining; empty: 508 instead.
	AlternateServer string `yaml:"alternate_server"`
	// Unauthenticated limits 401 answers per UDP source address (over TCP
	// and TLS the source is proven and cannot be used to amplify).
	Unauthenticated RateConfig `yaml:"unauthenticated"`
	// Connections caps the TCP and TLS connections of clients (control and
	// RFC 6062 data connections), so that nobody outside can hold the
	// edge's descriptors.
	Connections ConnLimits `yaml:"connections"`
}

// ConnLimits cap open client connections; one over a cap is closed at once.
type ConnLimits struct {
	PerAddress int `yaml:"per_address"`
	Max        int `yaml:"max"`
}

// RelayConfig says where relay sockets are bound and what is advertised.
type RelayConfig struct {
	BindIPv4      string `yaml:"bind_ipv4"`
	AdvertiseIPv4 string `yaml:"advertise_ipv4"` // default: bind_ipv4 (set it behind a NAT)
	BindIPv6      string `yaml:"bind_ipv6"`      // empty: no IPv6 relays (RFC 6156)
	AdvertiseIPv6 string `yaml:"advertise_ipv6"`
	PortMin       int    `yaml:"port_min"`
	PortMax       int    `yaml:"port_max"`
}

// LifetimeConfig caps lifetimes (RFC 8656 §7, §9, §12). Permission and
// channel lifetimes are fixed by the server; an allocation gets what the
// client asks up to 1h (pion's cap), or Allocation when it asks more or
// nothing.
type LifetimeConfig struct {
	Allocation time.Duration `yaml:"allocation"`
	Permission time.Duration `yaml:"permission"`
	Channel    time.Duration `yaml:"channel"`
}

// QuotaConfig bounds allocations.
type QuotaConfig struct {
	PerUser int `yaml:"allocations_per_user"` // 486 over it
	Total   int `yaml:"total_allocations"`    // 508 (or 300) over it
}

// BandwidthConfig caps relayed traffic, in kilobits per second (0: none).
type BandwidthConfig struct {
	PerAllocationKbps int `yaml:"per_allocation_kbps"`
	PerUserKbps       int `yaml:"per_user_kbps"`
}

// RateConfig is a token bucket.
type RateConfig struct {
	PerSecond float64 `yaml:"per_second"`
	Burst     int     `yaml:"burst"`
}

// DefaultConfig holds the defaults (relay disabled until configured).
func DefaultConfig() Config {
	return Config{
		PreviousSecretGrace: 24 * time.Hour, // the core's default turn.max_ttl
		Relay:               RelayConfig{PortMin: 49152, PortMax: 65535},
		Lifetimes:           LifetimeConfig{Allocation: 10 * time.Minute, Permission: 5 * time.Minute, Channel: 10 * time.Minute},
		Quota:               QuotaConfig{PerUser: 10, Total: 10000},
		Unauthenticated:     RateConfig{PerSecond: 20, Burst: 40},
		Connections:         ConnLimits{PerAddress: 100, Max: 10000},
	}
}

// Validate checks the section (nothing when disabled).
func (c *Config) Validate(v *config.V) {
	if !c.Enabled {
		return
	}
	v.CheckNotEmpty("realm", c.Realm)
	v.CheckNotEmpty("secret_file", c.SecretFile)
	v.Check(c.PreviousSecretGrace >= 0 && c.PreviousSecretGrace <= 7*24*time.Hour, "previous_secret_grace", "must be between 0 and 168h, got %s", c.PreviousSecretGrace)
	v.Check(len(c.ListenUDP)+len(c.ListenTCP)+len(c.ListenTLS) > 0, "listen_udp", "at least one of listen_udp, listen_tcp, listen_tls must be set")
	for name, list := range map[string][]string{"listen_udp": c.ListenUDP, "listen_tcp": c.ListenTCP, "listen_tls": c.ListenTLS} {
		for i, a := range list {
			checkIPPort(v, name+"["+config.Itoa(i)+"]", a)
		}
	}
	if len(c.ListenTLS) > 0 {
		v.CheckNotEmpty("tls_cert_file", c.TLSCertFile)
		v.CheckNotEmpty("tls_key_file", c.TLSKeyFile)
	}
	v.Check(c.UDPSockets >= 0 && c.UDPSockets <= 64, "udp_sockets", "must be 0 (one per CPU) to 64")
	c.Relay.Validate(v.In("relay"))
	for name, list := range map[string][]string{"allowed_peers": c.AllowedPeers, "denied_peers": c.DeniedPeers} {
		for i, s := range list {
			if _, err := policy.ParsePrefixes([]string{s}); err != nil {
				v.Errorf(name+"["+config.Itoa(i)+"]", "%v", err)
			}
		}
	}
	lv := v.In("lifetimes")
	lv.Check(c.Lifetimes.Allocation >= 30*time.Second && c.Lifetimes.Allocation <= time.Hour, "allocation", "must be between 30s and 1h, got %s", c.Lifetimes.Allocation)
	lv.Check(c.Lifetimes.Permission >= 30*time.Second && c.Lifetimes.Permission <= time.Hour, "permission", "must be between 30s and 1h, got %s", c.Lifetimes.Permission)
	lv.Check(c.Lifetimes.Channel >= 30*time.Second && c.Lifetimes.Channel <= time.Hour, "channel", "must be between 30s and 1h, got %s", c.Lifetimes.Channel)
	v.Check(c.Quota.PerUser >= 0, "quota.allocations_per_user", "must not be negative")
	v.Check(c.Quota.Total >= 0, "quota.total_allocations", "must not be negative")
	v.Check(c.Bandwidth.PerAllocationKbps >= 0, "bandwidth.per_allocation_kbps", "must not be negative")
	v.Check(c.Bandwidth.PerUserKbps >= 0, "bandwidth.per_user_kbps", "must not be negative")
	if c.AlternateServer != "" {
		checkIPPort(v, "alternate_server", c.AlternateServer)
	}
	v.Check(c.Unauthenticated.PerSecond > 0, "unauthenticated.per_second", "must be positive")
	v.Check(c.Unauthenticated.Burst >= 1, "unauthenticated.burst", "must be at least 1")
	v.Check(c.Connections.PerAddress >= 1, "connections.per_address", "must be at least 1")
	v.Check(c.Connections.Max >= c.Connections.PerAddress, "connections.max", "must be at least connections.per_address")
}

// Validate checks the relay addresses and port range.
func (r *RelayConfig) Validate(v *config.V) {
	v.Check(r.BindIPv4 != "" || r.BindIPv6 != "", "bind_ipv4", "at least one of bind_ipv4, bind_ipv6 must be set")
	check := func(key, s string, want4 bool) {
		if s == "" {
			return
		}
		a, err := netip.ParseAddr(s)
		switch {
		case err != nil:
			v.Errorf(key, "must be an IP address, got %q", s)
		case a.Is4() != want4:
			v.Errorf(key, "wrong address family: %s", s)
		}
	}
	check("bind_ipv4", r.BindIPv4, true)
	check("advertise_ipv4", r.AdvertiseIPv4, true)
	check("bind_ipv6", r.BindIPv6, false)
	check("advertise_ipv6", r.AdvertiseIPv6, false)
	for key, pair := range map[string][2]string{"advertise_ipv4": {r.BindIPv4, r.AdvertiseIPv4}, "advertise_ipv6": {r.BindIPv6, r.AdvertiseIPv6}} {
		if a, err := netip.ParseAddr(pair[0]); err == nil && a.IsUnspecified() && pair[1] == "" {
			v.Errorf(key, "must be set when the bind address is a wildcard")
		}
	}
	v.Check(r.PortMin >= 1024 && r.PortMax <= 65535 && r.PortMin <= r.PortMax, "port_min", "relay port range must be within 1024-65535 with port_min <= port_max, got %d-%d", r.PortMin, r.PortMax)
}

func checkIPPort(v *config.V, key, s string) {
	if _, err := netip.ParseAddrPort(s); err != nil {
		if host, _, err2 := net.SplitHostPort(s); err2 == nil && host == "" {
			v.Errorf(key, "must name an IP address, got %q", s)
			return
		}
		v.Errorf(key, "must be ip:port, got %q", s)
	}
}

// Resolve makes file paths relative to base.
func (c *Config) Resolve(base string) {
	for _, p := range []*string{&c.SecretFile, &c.TLSCertFile, &c.TLSKeyFile} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
}
