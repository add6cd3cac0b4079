package core

import (
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"portcullis/access"
	"portcullis/core/store"
	"portcullis/internal/config"
	"portcullis/internal/lifecycle"
	"portcullis/internal/ops"
)

// Config is the whole of core.yaml.
type Config struct {
	Log      lifecycle.LogConfig      `yaml:"log"`
	Metrics  ops.Config               `yaml:"metrics"`
	Shutdown lifecycle.ShutdownConfig `yaml:"shutdown"`
	SIP      SIPConfig                `yaml:"sip"`
	TLS      access.TLSFiles          `yaml:"tls"`
	// TrustedEdges names the edge certificates (SAN DNS names) that may hold
	// a link to this core: Lync's trusted-edge table.
	TrustedEdges []string        `yaml:"trusted_edges"`
	Store        store.Config    `yaml:"store"`
	HTTPS        APIConfig       `yaml:"https"`
	TURN         TURNConfig      `yaml:"turn"`
	Registrar    RegistrarConfig `yaml:"registrar"`
	// Federation sends home users' requests for other domains to an edge.
	Federation FederationConfig `yaml:"federation"`
	// Conferencing: the MCUs and the Conferencing Server Factory.
	Conferencing ConferencingConfig `yaml:"conferencing"`
}

// FederationConfig is the core's `federation` section.
type FederationConfig struct {
	// Edge is the internal SIP listener (host:port) of the edge that
	// federates; empty: requests for other domains are refused 403.
	Edge string `yaml:"edge"`
}

// SIPConfig is the core's `sip` section.
type SIPConfig struct {
	// Listen is the mutual-TLS listener that edges connect to.
	Listen string `yaml:"listen"`
	// UsersListen is a TLS listener for internal users' clients (no client
	// certificate; they authenticate with digest). Empty: none.
	UsersListen string `yaml:"users_listen"`
	// Hostname is the core's name (as in its certificate) used in SIP headers.
	Hostname         string        `yaml:"hostname"`
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	// UsersLimits cap the users listener: anyone on the internal network
	// can connect to it before authenticating.
	UsersLimits UsersLimits `yaml:"users_limits"`
	// Limits cap the mutual-TLS listener's connections (handshakes too).
	Limits access.ConnCaps `yaml:"limits"`
}

// UsersLimits are the users listener's connection limits.
type UsersLimits struct {
	// Connections open at once, per source address and in all: past
	// either, a new connection is closed at once (counted in
	// portcullis_core_mtls_refused_total by reason).
	ConnectionsPerAddress int `yaml:"connections_per_address"`
	MaxConnections        int `yaml:"max_connections"`
	// IdleTimeout closes a connection silent that long. A registered
	// client may send nothing but its REGISTER refresh, so it must be
	// longer than registrar.max_expires (default 2h15m against 2h): a
	// shorter one would cut a quiet client's flow and its calls with it.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MessageTimeout closes a connection whose SIP message, once begun,
	// is not complete this long after its first byte (slow-read
	// protection: the idle timeout alone restarts with every byte).
	MessageTimeout time.Duration `yaml:"message_timeout"`
}

// DefaultConfig returns the defaults every file is decoded onto.
func DefaultConfig() Config {
	return Config{
		Log:      lifecycle.LogConfig{Level: "info"},
		Metrics:  ops.Config{Listen: "127.0.0.1:9101"},
		Shutdown: lifecycle.ShutdownConfig{DrainTimeout: 30 * time.Second},
		SIP: SIPConfig{Listen: "0.0.0.0:5061", HandshakeTimeout: 10 * time.Second,
			UsersLimits: UsersLimits{ConnectionsPerAddress: 100, MaxConnections: 10000, IdleTimeout: 2*time.Hour + 15*time.Minute, MessageTimeout: 30 * time.Second},
			Limits:      access.DefaultConnCaps()},
		Store: store.Config{Driver: "sqlite", Path: "/var/lib/portcullis/core.db"},
		HTTPS: APIConfig{Listen: "0.0.0.0:443", Limits: access.DefaultConnCaps()},
		TURN:  TURNConfig{TTL: 8 * time.Hour, MaxTTL: 24 * time.Hour},
		Registrar: RegistrarConfig{NonceLifetime: 5 * time.Minute, MinExpires: 60 * time.Second,
			DefaultExpires: time.Hour, MaxExpires: 2 * time.Hour, MaxContacts: 10},
		Conferencing: ConferencingConfig{IMMCUs: 1, HeartbeatInterval: 5 * time.Second, HeartbeatMisses: 3, MaxMeetingsPerOrganizer: 100, MaxParticipants: 250},
	}
}

// Validate checks every section.
func (c *Config) Validate(v *config.V) {
	c.Log.Validate(v.In("log"))
	c.Metrics.Validate(v.In("metrics"), false)
	c.Shutdown.Validate(v.In("shutdown"))
	c.SIP.Validate(v.In("sip"))
	c.TLS.Validate(v.In("tls"))
	v.Check(len(c.TrustedEdges) > 0, "trusted_edges", "must list at least one edge certificate name")
	for i, n := range c.TrustedEdges {
		v.Check(n != "", "trusted_edges["+config.Itoa(i)+"]", "must not be empty")
	}
	c.Store.Validate(v.In("store"))
	v.In("https").CheckHostPort("listen", c.HTTPS.Listen, true)
	c.HTTPS.Limits.Validate(v.In("https").In("limits"))
	c.TURN.Validate(v.In("turn"))
	c.Registrar.Validate(v.In("registrar"))
	if c.SIP.UsersListen != "" {
		v.In("sip").In("users_limits").Check(c.SIP.UsersLimits.IdleTimeout > c.Registrar.MaxExpires, "idle_timeout",
			"must be longer than registrar.max_expires (%s): a registered client may send nothing else in between, got %s", c.Registrar.MaxExpires, c.SIP.UsersLimits.IdleTimeout)
	}
	if c.Federation.Edge != "" {
		v.In("federation").CheckHostPort("edge", c.Federation.Edge, false)
	}
	cv := v.In("conferencing")
	cv.Check(c.Conferencing.IMMCUs >= 1 && c.Conferencing.IMMCUs <= 16, "im_mcus", "must be 1 to 16, got %d", c.Conferencing.IMMCUs)
	cv.Check(c.Conferencing.HeartbeatInterval >= 50*time.Millisecond && c.Conferencing.HeartbeatInterval <= time.Minute, "heartbeat_interval", "must be between 50ms and 1m, got %s", c.Conferencing.HeartbeatInterval)
	cv.Check(c.Conferencing.HeartbeatMisses >= 1 && c.Conferencing.HeartbeatMisses <= 10, "heartbeat_misses", "must be 1 to 10, got %d", c.Conferencing.HeartbeatMisses)
	cv.Check(c.Conferencing.MaxMeetingsPerOrganizer >= 1, "max_meetings_per_organizer", "must be at least 1, got %d", c.Conferencing.MaxMeetingsPerOrganizer)
	cv.Check(c.Conferencing.MaxParticipants >= 2, "max_participants", "must be at least 2, got %d", c.Conferencing.MaxParticipants)
}

// Validate checks the turn section.
func (t *TURNConfig) Validate(v *config.V) {
	v.CheckNotEmpty("secret_file", t.SecretFile)
	v.Check(t.TTL >= time.Minute && t.TTL <= t.MaxTTL, "ttl", "must be between 1m and max_ttl (%s), got %s", t.MaxTTL, t.TTL)
	v.Check(t.MaxTTL <= 7*24*time.Hour, "max_ttl", "must be at most 168h, got %s", t.MaxTTL)
	for i, u := range t.URIs {
		v.Check(strings.HasPrefix(u, "turn:") || strings.HasPrefix(u, "turns:"), "uris["+config.Itoa(i)+"]", "must be a turn: or turns: URI (RFC 7065), got %q", u)
	}
}

// Preflight checks what only the machine can tell: certificate files and
// the TURN secret.
func Preflight(c Config) error {
	if _, err := access.LoadMaterial(c.TLS); err != nil {
		return err
	}
	_, err := access.LoadTURNSecret(c.TURN.SecretFile)
	return err
}

// Validate checks the SIP section.
func (s *SIPConfig) Validate(v *config.V) {
	v.CheckHostPort("listen", s.Listen, true)
	if s.UsersListen != "" {
		v.CheckHostPort("users_listen", s.UsersListen, true)
		l, lv := s.UsersLimits, v.In("users_limits")
		caps := access.ConnCaps{ConnectionsPerAddress: l.ConnectionsPerAddress, MaxConnections: l.MaxConnections}
		caps.Validate(lv)
		lv.Check(l.IdleTimeout >= time.Second, "idle_timeout", "must be at least 1s, got %s", l.IdleTimeout)
		lv.Check(l.MessageTimeout >= time.Second && l.MessageTimeout <= 10*time.Minute, "message_timeout", "must be between 1s and 10m, got %s", l.MessageTimeout)
	}
	s.Limits.Validate(v.In("limits"))
	v.CheckNotEmpty("hostname", s.Hostname)
	v.Check(s.HandshakeTimeout > 0 && s.HandshakeTimeout <= time.Minute, "handshake_timeout", "must be between 0s and 1m, got %s", s.HandshakeTimeout)
}

// Resolve makes file paths relative to base (the config file's folder).
func (c *Config) Resolve(base string) {
	c.TLS.Resolve(base)
	if c.TURN.SecretFile != "" && !filepath.IsAbs(c.TURN.SecretFile) {
		c.TURN.SecretFile = filepath.Join(base, c.TURN.SecretFile)
	}
	if c.Store.Path != "" && !filepath.IsAbs(c.Store.Path) {
		c.Store.Path = filepath.Join(base, c.Store.Path)
	}
}

// LoadConfig reads and validates a core config file. Relative paths in it
// are taken relative to the file's folder.
func LoadConfig(file string) (Config, error) {
	c := DefaultConfig()
	if err := config.Load(file, &c); err != nil {
		return Config{}, err
	}
	c.Resolve(filepath.Dir(file))
	return c, nil
}

// restartOnly lists what a reload cannot change, by comparing old and new.
func restartOnly(old, new Config) []string {
	var keys []string
	if old.Metrics != new.Metrics {
		keys = append(keys, "metrics")
	}
	if old.SIP != new.SIP {
		keys = append(keys, "sip")
	}
	if old.TLS != new.TLS {
		keys = append(keys, "tls")
	}
	if old.Store != new.Store {
		keys = append(keys, "store")
	}
	if old.HTTPS != new.HTTPS {
		keys = append(keys, "https")
	}
	if !reflect.DeepEqual(old.Registrar, new.Registrar) {
		keys = append(keys, "registrar")
	}
	return keys
}
