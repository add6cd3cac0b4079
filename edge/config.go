package edge

import (
	"crypto/tls"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"portcullis/access"
	"portcullis/internal/config"
	"portcullis/internal/lifecycle"
	"portcullis/internal/ops"
	"portcullis/internal/sipnode"
	"portcullis/policy"
	"portcullis/relay"
)

// Config is the whole of edge.yaml.
type Config struct {
	Log      lifecycle.LogConfig      `yaml:"log"`
	Metrics  ops.Config               `yaml:"metrics"`
	Shutdown lifecycle.ShutdownConfig `yaml:"shutdown"`
	// Internal is the edge's internal-side SIP listener (mutual TLS, core
	// nodes connect to it) and the name the edge is known by inside.
	Internal InternalConfig `yaml:"internal"`
	// TLS is the edge's internal PKI material: its certificate must carry
	// both server and client usage (it serves the internal listener and
	// presents itself to the core).
	TLS  access.TLSFiles `yaml:"tls"`
	Core LinkConfig      `yaml:"core"`
	// External is the Access Edge: the TLS listener remote users reach.
	External ExternalConfig `yaml:"external"`
	// TURN is the A/V Edge: the STUN/TURN media relay.
	TURN relay.Config `yaml:"turn"`
	// Federation: which outside users and partner domains get in (reloadable).
	Federation policy.FederationConfig `yaml:"federation"`
	// IMFilter screens every IM crossing the edge (reloadable).
	IMFilter policy.IMFilterConfig `yaml:"im_filter"`
}

// InternalConfig is the `internal` section.
type InternalConfig struct {
	Listen           string        `yaml:"listen"`
	Hostname         string        `yaml:"hostname"`
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	// TrustedCores names the core certificates allowed to connect.
	TrustedCores []string `yaml:"trusted_cores"`
	// RouteKeyFile keeps the key the edge signs its Path and Record-Route
	// tokens with (made, mode 0600, when missing), so that calls through
	// the edge go on across its restart; empty: a new key each run.
	RouteKeyFile string `yaml:"route_key_file"`
	// Limits cap the listener's connections (handshakes too).
	Limits access.ConnCaps `yaml:"limits"`
}

// ExternalConfig is the `external` section (the Access Edge).
type ExternalConfig struct {
	// Listen is the internet-facing SIP TLS listener; empty: none.
	Listen      string `yaml:"listen"`
	TLSCertFile string `yaml:"tls_cert_file"` // the public certificate
	TLSKeyFile  string `yaml:"tls_key_file"`
	// PublicName is the name in the public certificate that clients use as
	// their outbound proxy (a Route naming it is this edge's own).
	PublicName string `yaml:"public_name"`
	// HomeDomains are the domains this edge serves; a request from outside
	// for any other is refused 403 (no open relay).
	HomeDomains []string `yaml:"home_domains"`
	// AllowedMethods may come from outside; others get 405.
	AllowedMethods []string     `yaml:"allowed_methods"`
	Limits         LimitsConfig `yaml:"limits"`
}

// LimitsConfig hardens the external listener.
type LimitsConfig struct {
	// MaxMessageBytes: larger requests get 413; a user's message larger
	// than twice this closes the connection before its body is read (a
	// federation partner's may reach 1 MiB, the parse limit, which a
	// meeting's full roster needs).
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// RequestsPerSecond and Burst per source address; excess gets 503.
	RequestsPerSecond float64 `yaml:"requests_per_second"`
	Burst             int     `yaml:"burst"`
	// Connections open at once, per source address and in all.
	ConnectionsPerAddress int `yaml:"connections_per_address"`
	MaxConnections        int `yaml:"max_connections"`
	// HandshakeTimeout bounds the TLS handshake; IdleTimeout closes a
	// connection silent that long (clients keep alive with CRLF or REGISTER).
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	IdleTimeout      time.Duration `yaml:"idle_timeout"`
	// MessageTimeout closes a connection whose SIP message, once begun, is
	// not complete this long after its first byte (slow-read protection:
	// the idle timeout alone restarts with every byte).
	MessageTimeout time.Duration `yaml:"message_timeout"`
}

// Validate checks the section (nothing when there is no listener).
func (c *ExternalConfig) Validate(v *config.V) {
	if c.Listen == "" {
		return
	}
	v.CheckHostPort("listen", c.Listen, true)
	v.CheckNotEmpty("tls_cert_file", c.TLSCertFile)
	v.CheckNotEmpty("tls_key_file", c.TLSKeyFile)
	v.Check(len(c.HomeDomains) > 0, "home_domains", "must list at least one home domain")
	v.Check(len(c.AllowedMethods) > 0, "allowed_methods", "must list at least one method")
	for i, m := range c.AllowedMethods {
		v.Check(m != "" && strings.ToUpper(m) == m, "allowed_methods["+config.Itoa(i)+"]", "must be an upper-case SIP method, got %q", m)
	}
	l, lv := c.Limits, v.In("limits")
	lv.Check(l.MaxMessageBytes >= 4096 && l.MaxMessageBytes <= 1<<20, "max_message_bytes", "must be 4096 to 1048576, got %d", l.MaxMessageBytes)
	lv.Check(l.RequestsPerSecond > 0, "requests_per_second", "must be positive")
	lv.Check(l.Burst >= 1, "burst", "must be at least 1")
	caps := access.ConnCaps{ConnectionsPerAddress: l.ConnectionsPerAddress, MaxConnections: l.MaxConnections}
	caps.Validate(lv)
	lv.Check(l.HandshakeTimeout > 0 && l.HandshakeTimeout <= time.Minute, "handshake_timeout", "must be between 0s and 1m")
	lv.Check(l.IdleTimeout >= time.Second, "idle_timeout", "must be at least 1s")
	lv.Check(l.MessageTimeout >= time.Second && l.MessageTimeout <= 10*time.Minute, "message_timeout", "must be between 1s and 10m, got %s", l.MessageTimeout)
}

// LinkConfig is the `core` section: where the core is and how the edge keeps
// its link to it alive.
type LinkConfig struct {
	// Address is the core's SIP MTLS listener, host:port.
	Address string `yaml:"address"`
	// ServerName is the name the core's certificate must carry.
	ServerName        string        `yaml:"server_name"`
	KeepaliveInterval time.Duration `yaml:"keepalive_interval"`
	KeepaliveTimeout  time.Duration `yaml:"keepalive_timeout"`
	ReconnectMin      time.Duration `yaml:"reconnect_min"`
	ReconnectMax      time.Duration `yaml:"reconnect_max"`
}

// DefaultConfig returns the defaults every file is decoded onto.
func DefaultConfig() Config {
	return Config{
		Log:        lifecycle.LogConfig{Level: "info"},
		Metrics:    ops.Config{Listen: ""},
		Shutdown:   lifecycle.ShutdownConfig{DrainTimeout: 30 * time.Second},
		Internal:   InternalConfig{HandshakeTimeout: 10 * time.Second, Limits: access.DefaultConnCaps()},
		TURN:       relay.DefaultConfig(),
		Federation: policy.DefaultFederationConfig(),
		IMFilter:   policy.DefaultIMFilterConfig(),
		External: ExternalConfig{AllowedMethods: []string{"REGISTER", "INVITE", "ACK", "BYE", "CANCEL", "MESSAGE",
			"OPTIONS", "UPDATE", "INFO", "SERVICE", "PRACK", "SUBSCRIBE", "NOTIFY"},
			Limits: LimitsConfig{MaxMessageBytes: 64 << 10, RequestsPerSecond: 20, Burst: 40, ConnectionsPerAddress: 20,
				MaxConnections: 10000, HandshakeTimeout: 10 * time.Second, IdleTimeout: 5 * time.Minute, MessageTimeout: 30 * time.Second}},
		Core: LinkConfig{
			KeepaliveInterval: 15 * time.Second,
			KeepaliveTimeout:  5 * time.Second,
			ReconnectMin:      500 * time.Millisecond,
			ReconnectMax:      30 * time.Second,
		},
	}
}

// Validate checks every section.
func (c *Config) Validate(v *config.V) {
	c.Log.Validate(v.In("log"))
	c.Metrics.Validate(v.In("metrics"), true)
	c.Shutdown.Validate(v.In("shutdown"))
	c.Internal.Validate(v.In("internal"))
	c.TLS.Validate(v.In("tls"))
	c.Core.Validate(v.In("core"))
	c.TURN.Validate(v.In("turn"))
	c.External.Validate(v.In("external"))
	c.Federation.Validate(v.In("federation"))
	c.IMFilter.Validate(v.In("im_filter"))
	if c.Federation.AllowFederation && c.External.Listen == "" {
		v.In("federation").Errorf("allow_federation", "needs the external listener (external.listen)")
	}
}

// Validate checks the internal section.
func (c *InternalConfig) Validate(v *config.V) {
	v.CheckHostPort("listen", c.Listen, true)
	v.CheckNotEmpty("hostname", c.Hostname)
	v.Check(c.HandshakeTimeout > 0 && c.HandshakeTimeout <= time.Minute, "handshake_timeout", "must be between 0s and 1m, got %s", c.HandshakeTimeout)
	c.Limits.Validate(v.In("limits"))
	v.Check(len(c.TrustedCores) > 0, "trusted_cores", "must list at least one core certificate name")
	for i, n := range c.TrustedCores {
		v.Check(n != "", "trusted_cores["+config.Itoa(i)+"]", "must not be empty")
	}
}

// Validate checks the link section.
func (c *LinkConfig) Validate(v *config.V) {
	v.CheckHostPort("address", c.Address, false)
	v.CheckNotEmpty("server_name", c.ServerName)
	v.Check(c.KeepaliveInterval >= 100*time.Millisecond && c.KeepaliveInterval <= 10*time.Minute, "keepalive_interval", "must be between 100ms and 10m, got %s", c.KeepaliveInterval)
	v.Check(c.KeepaliveTimeout > 0 && c.KeepaliveTimeout <= time.Minute, "keepalive_timeout", "must be between 0s and 1m, got %s", c.KeepaliveTimeout)
	v.Check(c.ReconnectMin > 0, "reconnect_min", "must be positive, got %s", c.ReconnectMin)
	v.Check(c.ReconnectMax >= c.ReconnectMin, "reconnect_max", "must be at least reconnect_min (%s), got %s", c.ReconnectMin, c.ReconnectMax)
}

// Resolve makes file paths relative to base (the config file's folder).
func (c *Config) Resolve(base string) {
	c.TLS.Resolve(base)
	c.TURN.Resolve(base)
	for _, p := range []*string{&c.External.TLSCertFile, &c.External.TLSKeyFile, &c.Federation.TrustRootsFile, &c.Internal.RouteKeyFile} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
}

// Preflight checks what only the machine can tell: the certificate files,
// the route key file, the TURN secret and the TURN TLS key pair.
func Preflight(c Config) error {
	if _, err := access.LoadMaterial(c.TLS); err != nil {
		return err
	}
	if c.External.Listen != "" {
		if _, err := access.LoadServerPair(c.External.TLSCertFile, c.External.TLSKeyFile); err != nil {
			return fmt.Errorf("external: %w", err)
		}
		if c.Internal.RouteKeyFile != "" {
			if err := sipnode.CheckKeyFile(c.Internal.RouteKeyFile); err != nil {
				return fmt.Errorf("internal.route_key_file: %w", err)
			}
		}
	}
	if c.Federation.AllowFederation {
		if _, err := access.LoadRoots(c.Federation.TrustRootsFile); err != nil {
			return fmt.Errorf("federation: %w", err)
		}
	}
	if !c.TURN.Enabled {
		return nil
	}
	if _, err := access.LoadTURNSecret(c.TURN.SecretFile); err != nil {
		return err
	}
	if len(c.TURN.ListenTLS) > 0 {
		if _, err := tls.LoadX509KeyPair(c.TURN.TLSCertFile, c.TURN.TLSKeyFile); err != nil {
			return fmt.Errorf("turn.tls_cert_file %s / tls_key_file %s: %w", c.TURN.TLSCertFile, c.TURN.TLSKeyFile, err)
		}
	}
	return nil
}

// LoadConfig reads and validates an edge config file. Relative paths in it
// are taken relative to the file's folder.
func LoadConfig(file string) (Config, error) {
	c := DefaultConfig()
	if err := config.Load(file, &c); err != nil {
		return Config{}, err
	}
	c.Resolve(filepath.Dir(file))
	return c, nil
}

// restartOnly lists what a reload cannot change (the turn section is the
// relay's to judge: Server.Reload).
func restartOnly(old, new Config) []string {
	var keys []string
	if old.Metrics != new.Metrics {
		keys = append(keys, "metrics")
	}
	if old.Internal.Listen != new.Internal.Listen || old.Internal.Hostname != new.Internal.Hostname ||
		old.Internal.HandshakeTimeout != new.Internal.HandshakeTimeout || old.Internal.RouteKeyFile != new.Internal.RouteKeyFile ||
		old.Internal.Limits != new.Internal.Limits {
		keys = append(keys, "internal")
	}
	if old.TLS != new.TLS {
		keys = append(keys, "tls")
	}
	if old.Core.Address != new.Core.Address || old.Core.ServerName != new.Core.ServerName {
		keys = append(keys, "core.address/server_name")
	}
	// The public key pair is read again on every reload (Server.Reload).
	oe, ne := old.External, new.External
	oe.TLSCertFile, oe.TLSKeyFile, ne.TLSCertFile, ne.TLSKeyFile = "", "", "", ""
	if !reflect.DeepEqual(oe, ne) {
		keys = append(keys, "external")
	}
	return keys
}
