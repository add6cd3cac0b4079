package relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/turn/v5"
	"golang.org/x/time/rate"

	"portcullis/access"
	"portcullis/internal/lifecycle"
	"portcullis/policy"
	"portcullis/relay/internal/engine"
)

// Listener is one bound relay listener, for endpoints.json and logs.
type Listener struct {
	Protocol string // turn-udp, turn-tcp, turn-tls
	Address  string
}

// Server is a running relay.
type Server struct {
	log     *slog.Logger
	mu      sync.Mutex                      // serialises Reload
	cfg     Config                          // as started, with what reloads applied
	cert    atomic.Pointer[tls.Certificate] // TURN over TLS
	eng     *engine.Engine
	turn    *turn.Server
	metrics *metrics
	bound   []Listener
	closers []func() error
}

// Start binds every listener and starts relaying. On error nothing is left
// running.
func Start(cfg Config, deps lifecycle.Deps) (_ *Server, err error) {
	log := deps.Log.With("component", "relay")
	tune, err := tunables(cfg)
	if err != nil {
		return nil, err
	}
	s := &Server{log: log, cfg: cfg}
	defer func() {
		if err != nil {
			s.closeListeners()
		}
	}()
	s.metrics = newMetrics(deps.Registry, func() *engine.Engine { return s.eng })
	n := cfg.UDPSockets
	if n == 0 {
		n = runtime.NumCPU()
	}
	s.eng, err = engine.New(engine.Config{
		Log:          log,
		Realm:        cfg.Realm,
		Tune:         tune,
		UnauthRate:   rate.Limit(cfg.Unauthenticated.PerSecond),
		UnauthBurst:  cfg.Unauthenticated.Burst,
		Loops:        n,
		ConnsPerAddr: cfg.Connections.PerAddress,
		ConnsMax:     cfg.Connections.Max,
		Events:       s.metrics.events(),
	})
	if err != nil {
		return nil, err
	}
	gen := &engine.Generator{E: s.eng, Min: cfg.Relay.PortMin, Max: cfg.Relay.PortMax}
	if cfg.Relay.BindIPv4 != "" {
		gen.V4 = family(cfg.Relay.BindIPv4, cfg.Relay.AdvertiseIPv4)
	}
	if cfg.Relay.BindIPv6 != "" {
		gen.V6 = family(cfg.Relay.BindIPv6, cfg.Relay.AdvertiseIPv6)
	}
	if err := gen.Validate(); err != nil {
		return nil, err
	}

	sc := turn.ServerConfig{
		Realm:         cfg.Realm,
		LoggerFactory: pionLogs{log},
		AuthHandler: func(ra *turn.RequestAttributes) (string, []byte, bool) {
			return s.eng.Auth(ra.SrcAddr, ra.Username, ra.Realm)
		},
		QuotaHandler:       s.eng.Quota,
		AllocationLifetime: cfg.Lifetimes.Allocation,
		PermissionTimeout:  cfg.Lifetimes.Permission,
		ChannelBindTimeout: cfg.Lifetimes.Channel,
		EventHandler: turn.EventHandler{
			OnAllocationCreated: func(src, dst net.Addr, proto, user, realm string, relay net.Addr, port int) {
				s.metrics.created.Inc()
				s.eng.AllocationCreated(src, dst, proto, user, realm, relay, port)
			},
			OnAllocationDeleted: s.eng.AllocationDeleted,
			OnPermissionCreated: s.eng.PermissionCreated,
			OnPermissionDeleted: s.eng.PermissionDeleted,
			OnChannelCreated:    s.eng.ChannelCreated,
			OnChannelDeleted:    s.eng.ChannelDeleted,
		},
	}
	for _, a := range cfg.ListenUDP {
		group, err := s.eng.ListenUDP(netip.MustParseAddrPort(a), n)
		if err != nil {
			return nil, fmt.Errorf("turn.listen_udp %s: %w", a, err)
		}
		addr := group.Addr()
		s.closers = append(s.closers, group.Close)
		sc.PacketConnConfigs = append(sc.PacketConnConfigs, turn.PacketConnConfig{PacketConn: group, RelayAddressGenerator: gen, PermissionHandler: s.eng.Permission})
		s.bound = append(s.bound, Listener{"turn-udp", addr.String()})
	}
	var tlsConf *tls.Config
	if len(cfg.ListenTLS) > 0 {
		if err := s.loadCert(cfg); err != nil {
			return nil, err
		}
		// The certificate is looked up per handshake, so that a reload can
		// put a renewed one in place without closing anything.
		tlsConf = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.cert.Load(), nil
		}}
	}
	for _, l := range []struct {
		proto string
		addrs []string
		tls   *tls.Config
	}{{"turn-tcp", cfg.ListenTCP, nil}, {"turn-tls", cfg.ListenTLS, tlsConf}} {
		for _, a := range l.addrs {
			ln, err := s.eng.ListenStream(a, l.tls)
			if err != nil {
				return nil, fmt.Errorf("turn listen %s %s: %w", l.proto, a, err)
			}
			s.closers = append(s.closers, ln.Close)
			sc.ListenerConfigs = append(sc.ListenerConfigs, turn.ListenerConfig{Listener: ln, RelayAddressGenerator: gen, PermissionHandler: s.eng.Permission})
			s.bound = append(s.bound, Listener{l.proto, ln.Addr().String()})
		}
	}
	if s.turn, err = turn.NewServer(sc); err != nil {
		return nil, err
	}
	log.Info("relay listening", "listeners", s.bound, "relay_v4", cfg.Relay.AdvertiseIPv4+"/"+cfg.Relay.BindIPv4,
		"relay_v6", cfg.Relay.AdvertiseIPv6+"/"+cfg.Relay.BindIPv6, "ports", fmt.Sprintf("%d-%d", cfg.Relay.PortMin, cfg.Relay.PortMax),
		"udp_sockets_per_address", n, "allowed_peers", cfg.AllowedPeers)
	return s, nil
}

// tunables reads the settings a reload may change: the secret file, the
// peer policy, quotas, the alternate server and the bandwidth caps.
func tunables(cfg Config) (engine.Tunables, error) {
	secret, err := access.LoadTURNSecret(cfg.SecretFile)
	if err != nil {
		return engine.Tunables{}, err
	}
	pol, err := policy.NewPeerPolicy(cfg.AllowedPeers, cfg.DeniedPeers)
	if err != nil {
		return engine.Tunables{}, err
	}
	var alt netip.AddrPort
	if cfg.AlternateServer != "" {
		if alt, err = netip.ParseAddrPort(cfg.AlternateServer); err != nil {
			return engine.Tunables{}, fmt.Errorf("turn.alternate_server: %w", err)
		}
	}
	return engine.Tunables{
		Secret:       secret,
		Policy:       pol,
		QuotaPerUser: cfg.Quota.PerUser,
		QuotaTotal:   cfg.Quota.Total,
		Alternate:    alt,
		AllocRate:    float64(cfg.Bandwidth.PerAllocationKbps) * 1000 / 8,
		UserRate:     float64(cfg.Bandwidth.PerUserKbps) * 1000 / 8,
	}, nil
}

// loadCert reads the TURN-over-TLS key pair.
func (s *Server) loadCert(cfg Config) error {
	pair, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
	if err != nil {
		return fmt.Errorf("turn.tls_cert_file / tls_key_file: %w", err)
	}
	s.cert.Store(&pair)
	return nil
}

// WithTunables is c with the settings a reload changes taken from n: the
// ones tunables reads, and the TLS key pair's files.
func (c Config) WithTunables(n Config) Config {
	c.SecretFile, c.PreviousSecretGrace = n.SecretFile, n.PreviousSecretGrace
	c.AllowedPeers, c.DeniedPeers = n.AllowedPeers, n.DeniedPeers
	c.Quota, c.Bandwidth, c.AlternateServer = n.Quota, n.Bandwidth, n.AlternateServer
	c.TLSCertFile, c.TLSKeyFile = n.TLSCertFile, n.TLSKeyFile
	return c
}

// RestartOnly names the settings of cfg that differ from the running ones
// and that only a restart changes: every key of the section but those
// WithTunables takes, so a setting added later is restart-only until it is
// made reloadable there.
func (s *Server) RestartOnly(cfg Config) []string {
	s.mu.Lock()
	kept := s.cfg.WithTunables(cfg) // what a reload would leave running
	s.mu.Unlock()
	var keys []string
	have, want := reflect.ValueOf(kept), reflect.ValueOf(cfg)
	for i := range have.NumField() {
		if !reflect.DeepEqual(have.Field(i).Interface(), want.Field(i).Interface()) {
			name, _, _ := strings.Cut(have.Type().Field(i).Tag.Get("yaml"), ",")
			keys = append(keys, "turn."+name)
		}
	}
	return keys
}

// Reload applies what a reload may change (tunables, and the TLS key pair
// for new handshakes) and keeps allocations going. A changed secret file
// takes effect at once, and credentials issued under the secret before it
// are still honoured for turn.previous_secret_grace after the change (and
// never after the next one), so that calls in progress keep their media
// while the core issues new ones. On error nothing changes.
func (s *Server) Reload(cfg Config) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := tunables(cfg)
	if err != nil {
		return err
	}
	if s.cert.Load() != nil { // TURN over TLS: the key pair is read again (a renewed certificate)
		if err := s.loadCert(cfg); err != nil {
			return err
		}
	}
	cur := s.eng.Tunables()
	rotated := !bytes.Equal(t.Secret, cur.Secret)
	switch {
	case rotated:
		t.Previous, t.RotatedAt = cur.Secret, time.Now()
	default:
		t.Previous, t.RotatedAt = cur.Previous, cur.RotatedAt
	}
	var previousUntil any // logged: when the previous secret's credentials stop working
	if t.Previous != nil {
		t.PreviousUntil = t.RotatedAt.Add(cfg.PreviousSecretGrace)
		previousUntil = t.PreviousUntil.UTC().Format(time.RFC3339)
	}
	s.eng.Retune(t)
	s.cfg = s.cfg.WithTunables(cfg)
	s.log.Info("relay settings applied", "secret_rotated", rotated, "previous_secret_until", previousUntil, "allowed_peers", cfg.AllowedPeers, "denied_peers", cfg.DeniedPeers,
		"quota_per_user", cfg.Quota.PerUser, "quota_total", cfg.Quota.Total,
		"bandwidth_per_allocation_kbps", cfg.Bandwidth.PerAllocationKbps, "bandwidth_per_user_kbps", cfg.Bandwidth.PerUserKbps)
	return nil
}

func family(bind, advertise string) *engine.Family {
	b := netip.MustParseAddr(bind)
	a := b
	if advertise != "" {
		a = netip.MustParseAddr(advertise)
	}
	return &engine.Family{Bind: b, Advertise: a}
}

// Listeners are the bound listeners.
func (s *Server) Listeners() []Listener { return s.bound }

// Active is the number of allocations in use.
func (s *Server) Active() int { return s.eng.Active() }

// Drain refuses new allocations (508, or 300 with an alternate) and waits
// until the existing ones end or ctx does.
func (s *Server) Drain(ctx context.Context) error {
	s.eng.Drain()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for s.eng.Active() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d allocations still active at the drain deadline", s.eng.Active())
		case <-t.C:
		}
	}
	return nil
}

// Close ends every allocation and closes every listener.
func (s *Server) Close() error {
	s.eng.Closing()
	var err error
	if s.turn != nil {
		err = s.turn.Close()
	}
	return errors.Join(err, s.closeListeners())
}

func (s *Server) closeListeners() error {
	var errs []error
	for _, c := range s.closers {
		if err := c(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	s.closers = nil
	if s.eng != nil {
		s.eng.Stop()
	}
	return errors.Join(errs...)
}
