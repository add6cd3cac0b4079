// Package edge is the DMZ server. This foundation holds its mutual-TLS link
// to the core and its internal SIP listener; the Access Edge, A/V Edge and
// Web Conferencing Edge roles plug in here.
package edge

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"github.com/emiago/sipgo/sip"
	"golang.org/x/time/rate"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"portcullis/access"
	"portcullis/internal/lifecycle"
	"portcullis/internal/logthrottle"
	"portcullis/internal/ops"
	"portcullis/internal/sipnode"
	"portcullis/policy"
	"portcullis/relay"
)

// Server is a running edge.
type Server struct {
	cfg     atomic.Pointer[Config]
	deps    lifecycle.Deps
	log     *slog.Logger
	metrics *metrics
	allow   *access.AllowList

	sip   *sipnode.Node
	ae    *accessEdge // nil without an external listener
	link  *link
	ops   *ops.Server
	relay *relay.Server // nil when turn.enabled is false
	// public is the external listener's certificate (also presented to
	// federation partners), read again on reload: nil without one.
	public atomic.Pointer[tls.Certificate]

	stopLink      context.CancelFunc
	stopKeepalive context.CancelFunc // partner connections' keepalive
	linkDone      sync.WaitGroup
}

// Start loads the certificate files, binds the listeners, and starts the
// link to the core. On error nothing is left running.
func Start(cfg Config, deps lifecycle.Deps) (_ *Server, err error) {
	material, err := access.LoadMaterial(cfg.TLS)
	if err != nil {
		return nil, err
	}
	s := &Server{deps: deps, log: deps.Log.With("component", "edge"), allow: access.NewAllowList(cfg.Internal.TrustedCores)}
	warnFileLimit(s.log, cfg, openFileLimit())
	s.cfg.Store(&cfg)
	s.metrics = newMetrics(deps.Registry)
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	var public *access.Material
	if cfg.External.Listen != "" {
		if public, err = access.LoadServerPair(cfg.External.TLSCertFile, cfg.External.TLSKeyFile); err != nil {
			return nil, fmt.Errorf("external: %w", err)
		}
		s.public.Store(&public.Cert)
	}
	publicName := cfg.External.PublicName
	if publicName == "" {
		publicName = cfg.Internal.Hostname
	}
	partners := &partnerAgents{cert: s.public.Load, hostname: publicName, max: cfg.External.Limits.MaxMessageBytes,
		log: s.log.With("listener", "sip-federation"), agents: map[string]*sipnode.Node{}}
	partners.roots.Store(x509.NewCertPool()) // no partner verifies until roots are configured
	if cfg.Federation.AllowFederation {
		roots, err := access.LoadRoots(cfg.Federation.TrustRootsFile)
		if err != nil {
			return nil, fmt.Errorf("federation: %w", err)
		}
		partners.roots.Store(roots)
	}
	s.sip, err = sipnode.New(sipnode.Config{
		Name:         "portcullis-edge",
		Hostname:     cfg.Internal.Hostname,
		Listen:       cfg.Internal.Listen,
		Caps:         cfg.Internal.Limits,
		UserListen:   cfg.External.Listen,
		UserMaterial: public,
		UserCert:     s.public.Load,
		UserLimits: sipnode.Limits{HandshakeTimeout: cfg.External.Limits.HandshakeTimeout, MaxConnsPerAddr: cfg.External.Limits.ConnectionsPerAddress,
			MaxConns: cfg.External.Limits.MaxConnections, IdleTimeout: cfg.External.Limits.IdleTimeout,
			MessageTimeout: cfg.External.Limits.MessageTimeout},
		MaxMessage: cfg.External.Limits.MaxMessageBytes,
		// The core's NOTIFYs carry a meeting's full roster (about 330 bytes a
		// participant): 1 MiB holds 3,000.
		ParseLimit: 1 << 20,
		PartnerRoots: func() *x509.CertPool {
			if !s.cfg.Load().Federation.AllowFederation {
				return nil // a certificate offered then is refused
			}
			return partners.roots.Load()
		},
		Material:         material,
		Allow:            s.allow,
		HandshakeTimeout: cfg.Internal.HandshakeTimeout,
		ClientTLS:        access.ClientConfig(material, cfg.Core.ServerName),
		Log:              s.log.With("listener", "sip-internal"),
		OnRequest:        func(m string) { s.metrics.requests.WithLabelValues(m).Inc() },
		OnRefused:        func(r string) { s.metrics.mtlsRefused.WithLabelValues(r).Inc() },
	})
	if err != nil {
		return nil, fmt.Errorf("internal.listen %s: %w", cfg.Internal.Listen, err)
	}
	if cfg.External.Listen != "" {
		tokens := sipnode.NewFlowTokens()
		if cfg.Internal.RouteKeyFile != "" {
			key, err := sipnode.LoadOrMakeKey(cfg.Internal.RouteKeyFile)
			if err != nil {
				return nil, fmt.Errorf("internal.route_key_file: %w", err)
			}
			tokens = sipnode.NewFlowTokensWithKey(key)
		}
		ae := &accessEdge{node: s.sip, contacts: newContactFlows(4 * max(cfg.External.Limits.MaxConnections, 1000)), internal: s.sip.Addr(), external: s.sip.UserAddr(), cfg: cfg.External, hostname: cfg.Internal.Hostname, coreAddr: cfg.Core.Address,
			tokens: tokens, log: s.log.With("role", "access-edge"), quiet: logthrottle.New(s.log.With("role", "access-edge")),
			rate:      policy.NewSourceLimiter(rate.Limit(cfg.External.Limits.RequestsPerSecond), cfg.External.Limits.Burst),
			refused:   func(r string) { s.metrics.refused.WithLabelValues(r).Inc() },
			fed:       policy.NewFederation(cfg.Federation),
			partners:  partners,
			federated: func(d, t string) { s.metrics.federated.WithLabelValues(d, t).Inc() },
			filtered:  func(d, a string) { s.metrics.imFilter.WithLabelValues(d, a).Inc() },
		}
		ae.filter.Store(policy.NewIMFilter(cfg.IMFilter))
		ae.policy = ae.chain()
		partners.handle, partners.methods = ae.handle, cfg.External.AllowedMethods
		s.ae = ae
		for _, m := range cfg.External.AllowedMethods {
			s.sip.Handle(sip.RequestMethod(m), ae.handle)
		}
		s.sip.Server.OnNoRoute(func(req *sip.Request, tx sip.ServerTransaction) { ae.methodNotAllowed(req, tx) })
	}
	if s.ae != nil {
		kctx, stop := context.WithCancel(context.Background())
		s.stopKeepalive = stop
		s.linkDone.Add(1)
		go func() {
			defer s.linkDone.Done()
			s.ae.partners.keepalive(kctx, func() time.Duration { return s.cfg.Load().Federation.KeepaliveInterval })
		}()
	}
	s.link, err = newLink(s.sip, cfg.Core, s.log.With("link", "core"), linkEvents{
		onUp:   func() { s.metrics.linkUp.Set(1) },
		onDown: func() { s.metrics.linkUp.Set(0); s.metrics.linkDowns.Inc() },
		onPing: func(ok bool) {
			s.metrics.keepalives.WithLabelValues(map[bool]string{true: "ok", false: "failed"}[ok]).Inc()
		},
	})
	if err != nil {
		return nil, err
	}
	if cfg.TURN.Enabled {
		if s.relay, err = relay.Start(cfg.TURN, deps); err != nil {
			return nil, err
		}
	}
	if s.ops, err = ops.Listen(cfg.Metrics.Listen, deps.Registry, s.Ready, s.log); err != nil {
		return nil, fmt.Errorf("metrics.listen %s: %w", cfg.Metrics.Listen, err)
	}
	s.sip.Serve()
	ctx, cancel := context.WithCancel(context.Background())
	s.stopLink = cancel
	s.linkDone.Add(1)
	go func() {
		defer s.linkDone.Done()
		s.link.run(ctx)
	}()
	s.log.Info("edge listening", "sip_internal", s.sip.Addr(), "sip_external", s.sip.UserAddr(), "metrics", s.ops.Addr(), "core", cfg.Core.Address)
	return s, nil
}

// Ready is nil while the link to the core is up and the edge is not draining.
func (s *Server) Ready() error {
	if s.sip.Draining() {
		return errors.New("draining")
	}
	return s.link.Ready()
}

// Config is the configuration in force.
func (s *Server) Config() Config { return *s.cfg.Load() }

// Reload swaps in a new, already validated configuration. The log level,
// trusted cores and keepalive timing change at once; listener, TLS and core
// address settings need a restart, which is logged.
func (s *Server) Reload(cfg Config) error {
	old := s.cfg.Load()
	keys := restartOnly(*old, cfg)
	switch {
	case s.relay != nil:
		keys = append(keys, s.relay.RestartOnly(cfg.TURN)...)
	case !reflect.DeepEqual(old.TURN, cfg.TURN):
		keys = append(keys, "turn")
	}
	if len(keys) > 0 {
		s.log.Warn("reload: these settings change only on restart; keeping the running values", "keys", strings.Join(keys, ","))
		cfg.Metrics, cfg.TLS = old.Metrics, old.TLS
		cfg.Internal.Listen, cfg.Internal.Hostname, cfg.Internal.HandshakeTimeout = old.Internal.Listen, old.Internal.Hostname, old.Internal.HandshakeTimeout
		cfg.Core.Address, cfg.Core.ServerName = old.Core.Address, old.Core.ServerName
	}
	// The relay's secret, peer policy, quotas, alternate and bandwidth caps
	// change in place (allocations go on); the rest of turn only on restart.
	cfg.TURN = old.TURN.WithTunables(cfg.TURN)
	var public *tls.Certificate
	if s.public.Load() != nil { // a renewed public certificate, for new connections
		m, err := access.LoadServerPair(cfg.External.TLSCertFile, cfg.External.TLSKeyFile)
		if err != nil {
			s.metrics.reloads.WithLabelValues("rejected").Inc()
			s.log.Error("reload rejected: external.tls_cert_file / tls_key_file; keeping the running config", "error", err)
			return err
		}
		public = &m.Cert
	}
	var roots *x509.CertPool
	if s.ae != nil && cfg.Federation.AllowFederation {
		var err error
		if roots, err = access.LoadRoots(cfg.Federation.TrustRootsFile); err != nil {
			s.metrics.reloads.WithLabelValues("rejected").Inc()
			s.log.Error("reload rejected: federation trust roots; keeping the running config", "error", err)
			return err
		}
	}
	if s.relay != nil {
		if err := s.relay.Reload(cfg.TURN); err != nil {
			s.metrics.reloads.WithLabelValues("rejected").Inc()
			s.log.Error("reload rejected: turn; keeping the running config", "error", err)
			return err
		}
	}
	if public != nil {
		s.public.Store(public)
	}
	s.allow.Set(cfg.Internal.TrustedCores)
	if s.ae != nil {
		if roots != nil {
			s.ae.partners.roots.Store(roots)
		}
		s.ae.fed.Set(cfg.Federation)
		s.ae.filter.Store(policy.NewIMFilter(cfg.IMFilter))
	}
	if l, err := lifecycle.ParseLevel(cfg.Log.Level); err == nil && s.deps.Level != nil {
		s.deps.Level.Set(l)
	}
	link := cfg.Core
	s.link.timing.Store(&link)
	s.cfg.Store(&cfg)
	s.metrics.reloads.WithLabelValues("applied").Inc()
	s.log.Info("edge config applied", "trusted_cores", cfg.Internal.TrustedCores, "keepalive_interval", cfg.Core.KeepaliveInterval.String(),
		"federation", cfg.Federation.AllowFederation, "partners", len(cfg.Federation.Partners), "blocked_domains", len(cfg.Federation.BlockedDomains),
		"discovery", cfg.Federation.Discovery.Enabled, "im_filter", cfg.IMFilter.Enabled)
	return nil
}

// ReloadRejected counts a reload that failed validation.
func (s *Server) ReloadRejected() { s.metrics.reloads.WithLabelValues("rejected").Inc() }

// ExternalAddr is the Access Edge's listener address ("" when off).
func (s *Server) ExternalAddr() string { return s.sip.UserAddr() }

// Addr returns the internal SIP and metrics listener addresses.
func (s *Server) Addr() (sipAddr, metricsAddr string) { return s.sip.Addr(), s.ops.Addr() }

// Drain stops accepting and waits for requests in progress and for TURN
// allocations to end (new ones are refused). The link stays up until Close
// so that work in progress can still reach the core.
func (s *Server) Drain(ctx context.Context) error {
	err := s.sip.Drain(ctx)
	if s.relay != nil {
		err = errors.Join(err, s.relay.Drain(ctx))
	}
	return err
}

// Relay is the TURN relay (nil when disabled).
func (s *Server) Relay() *relay.Server { return s.relay }

// Close stops the link and every listener.
func (s *Server) Close() error {
	if s.stopKeepalive != nil {
		s.stopKeepalive()
	}
	if s.stopLink != nil {
		s.stopLink()
	}
	s.linkDone.Wait()
	var errs []error
	if s.relay != nil {
		errs = append(errs, s.relay.Close())
	}
	if s.sip != nil {
		errs = append(errs, s.sip.Close())
	}
	if s.ae != nil {
		errs = append(errs, s.ae.partners.Close())
	}
	if s.ops != nil {
		errs = append(errs, s.ops.Close())
	}
	return errors.Join(errs...)
}
