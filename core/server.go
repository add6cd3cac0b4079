// Package core is the Front End on the internal network: it accepts the
// edges' mutual-TLS SIP links and will host the registrar, proxy and
// conferencing components.
package core

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/emiago/sipgo/sip"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"portcullis/access"
	"portcullis/core/store"
	"portcullis/internal/lifecycle"
	"portcullis/internal/ops"
	"portcullis/internal/sipnode"
)

// Server is a running core.
type Server struct {
	factory    *Factory
	focus      *focusManager
	stopMCUs   context.CancelFunc
	mcuDone    sync.WaitGroup
	reporter   *reporter
	cfg        atomic.Pointer[Config]
	turnSecret atomic.Pointer[[]byte] // read again on reload
	deps       lifecycle.Deps
	log        *slog.Logger
	metrics    *metrics
	allow      *access.AllowList

	store *store.Store
	sip   *sipnode.Node
	ops   *ops.Server
	api   *api

	stopSweep context.CancelFunc
	sweepDone chan struct{}
}

// Start validates what can only be checked against the machine (certificate
// files), opens the store, binds the listeners and starts serving. On error
// nothing is left running.
func Start(ctx context.Context, cfg Config, deps lifecycle.Deps) (_ *Server, err error) {
	material, err := access.LoadMaterial(cfg.TLS)
	if err != nil {
		return nil, err
	}
	secret, err := access.LoadTURNSecret(cfg.TURN.SecretFile)
	if err != nil {
		return nil, err
	}
	s := &Server{deps: deps, log: deps.Log.With("component", "core"), allow: access.NewAllowList(cfg.TrustedEdges)}
	s.cfg.Store(&cfg)
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	s.metrics = newMetrics(deps.Registry, func() float64 {
		if s.sip == nil {
			return 0
		}
		return float64(s.sip.PeerCount())
	})
	if s.store, err = store.Open(ctx, cfg.Store); err != nil {
		return nil, err
	}
	s.sip, err = sipnode.New(sipnode.Config{
		Name:       "portcullis-core",
		Hostname:   cfg.SIP.Hostname,
		Listen:     cfg.SIP.Listen,
		UserListen: cfg.SIP.UsersListen,
		UserLimits: sipnode.Limits{MaxConnsPerAddr: cfg.SIP.UsersLimits.ConnectionsPerAddress, MaxConns: cfg.SIP.UsersLimits.MaxConnections,
			IdleTimeout: cfg.SIP.UsersLimits.IdleTimeout, MessageTimeout: cfg.SIP.UsersLimits.MessageTimeout},
		ClientTLS:        access.ClientConfigAllow(material, s.allow), // to edges' internal listeners (a Path, a Record-Route or federation.edge leads there): trusted edges by certificate name
		StripFromUsers:   []string{access.TrustHeader},
		Material:         material,
		Allow:            s.allow,
		HandshakeTimeout: cfg.SIP.HandshakeTimeout,
		Caps:             cfg.SIP.Limits,
		Log:              s.log.With("listener", "sip-mtls"),
		OnRequest:        func(m string) { s.metrics.requests.WithLabelValues(m).Inc() },
		OnRefused:        func(r string) { s.metrics.mtlsRefused.WithLabelValues(r).Inc() },
	})
	if err != nil {
		return nil, fmt.Errorf("sip.listen %s: %w", cfg.SIP.Listen, err)
	}
	auth := &authenticator{st: s.store, digest: access.NewDigest(cfg.Registrar.realms(), cfg.Registrar.NonceLifetime),
		log: s.log.With("role", "auth"), refused: func(r string) { s.metrics.requestsRefused.WithLabelValues(r).Inc() }}
	reg := &registrar{authenticator: auth, flow: s.sip.Flow, cfg: cfg.Registrar}
	s.sip.Handle(sip.REGISTER, reg.register)
	routeKey, err := s.store.RouteKey(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: route key: %w", err)
	}
	px := &proxy{authenticator: auth, node: s.sip, log: s.log.With("role", "proxy"), tokens: sipnode.NewFlowTokensWithKey(routeKey),
		hostname: cfg.SIP.Hostname, fedEdge: func() string { return s.cfg.Load().Federation.Edge }}
	s.turnSecret.Store(&secret)
	mr := &mras{authenticator: auth, secret: s.secret, turn: func() TURNConfig { return s.cfg.Load().TURN }, log: s.log.With("role", "mras")}
	fm := &focusManager{authenticator: auth, node: s.sip, log: s.log.With("role", "focus"), confs: map[string]*focus{}, mcus: map[string]*IMMCU{}}
	fm.csf = &serverFactory{cfg: func() ConferencingConfig { return s.cfg.Load().Conferencing }, log: s.log.With("role", "conferencing-server-factory"),
		lost: fm.mcuLost, mcus: map[string]*mcuState{}}
	fm.ctx, fm.stop = context.WithCancel(context.Background())
	s.focus = fm
	s.factory = NewFactory(s.store)
	s.factory.maxPerOrganizer = func() int { return s.cfg.Load().Conferencing.MaxMeetingsPerOrganizer }
	s.factory.ended = fm.ended
	// The dispatch table: requests for a conference URI go to its Focus,
	// whatever the method; the others to the proxy, the Focus Factory or
	// MRAS.
	for m, h := range map[sip.RequestMethod]sipnode.Handler{
		// SUBSCRIBE creates a dialog like INVITE: forked, record-routed.
		// INFO and UPDATE belong in dialogs, but out of one they are routed
		// like MESSAGE (authenticated, forked) and the user agent answers.
		sip.MESSAGE: px.route, sip.OPTIONS: px.route, sip.INFO: px.route, sip.UPDATE: px.route, sip.INVITE: px.invite, sip.SUBSCRIBE: px.invite,
		// PRACK (RFC 3262) is always in a dialog, an early one at least.
		sip.ACK: px.inDialog, sip.BYE: px.inDialog, sip.CANCEL: px.inDialog, sip.NOTIFY: px.inDialog, sip.PRACK: px.inDialog,
		"SERVICE": service(&factoryService{authenticator: auth, f: s.factory, log: s.log.With("role", "focus-factory")}, mr),
	} {
		s.sip.Handle(m, conferences(fm, h))
	}
	sweepCtx, stop := context.WithCancel(context.Background())
	s.stopSweep, s.sweepDone = stop, make(chan struct{})
	go func() { defer close(s.sweepDone); reg.sweep(sweepCtx, 10*time.Second) }()
	if s.api, err = newAPI(cfg.HTTPS, material, s.allow, s.secret, func() TURNConfig { return s.cfg.Load().TURN }, s.factory, s.log.With("listener", "https"),
		func(r string) { s.metrics.mtlsRefused.WithLabelValues(r).Inc() }); err != nil {
		return nil, fmt.Errorf("https.listen %s: %w", cfg.HTTPS.Listen, err)
	}
	s.api.csf = fm.csf
	if err := s.startMCUs(cfg, material, fm); err != nil {
		return nil, err
	}
	if s.ops, err = ops.Listen(cfg.Metrics.Listen, deps.Registry, s.Ready, s.log); err != nil {
		return nil, fmt.Errorf("metrics.listen %s: %w", cfg.Metrics.Listen, err)
	}
	s.sip.Serve()
	version, _ := s.store.SchemaVersion(ctx)
	s.log.Info("core listening", "sip_mtls", s.sip.Addr(), "sip_users", s.sip.UserAddr(), "https", s.api.Addr(), "metrics", s.ops.Addr(),
		"trusted_edges", cfg.TrustedEdges, "store", cfg.Store.Path, "schema_version", version)
	return s, nil
}

// startMCUs starts the in-process IM MCUs and the factory's sweep. Each MCU
// reports to the factory over HTTPS with the core's certificate, the first
// time before Start returns.
func (s *Server) startMCUs(cfg Config, material *access.Material, fm *focusManager) error {
	host, port, err := net.SplitHostPort(s.api.Addr())
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	url := "https://" + net.JoinHostPort(host, port) + "/v1/c3p"
	rep := newReporter(url, access.ClientConfig(material, cfg.SIP.Hostname), s.log.With("role", "mcu"))
	s.reporter = rep
	ctx, stop := context.WithCancel(context.Background())
	s.stopMCUs = stop
	every := func() time.Duration { return s.cfg.Load().Conferencing.HeartbeatInterval }
	for i := range cfg.Conferencing.IMMCUs {
		m := &IMMCU{id: "im-" + strconv.Itoa(i+1), fanout: 64, rep: rep, every: every, log: s.log.With("role", "im-mcu"), meetings: map[string]bool{}}
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := m.heartbeat(hctx)
		cancel()
		if err != nil {
			return fmt.Errorf("IM MCU %s: first heartbeat: %w", m.id, err)
		}
		fm.mcus[m.id] = m
		s.mcuDone.Add(1)
		go func() { defer s.mcuDone.Done(); m.run(ctx) }()
	}
	s.mcuDone.Add(1)
	go func() { defer s.mcuDone.Done(); fm.csf.sweep(ctx) }()
	return nil
}

// IMMCUs are the IM MCUs running in this core.
func (s *Server) IMMCUs() []*IMMCU {
	var out []*IMMCU
	for i := 1; ; i++ {
		m := s.focus.mcus["im-"+strconv.Itoa(i)]
		if m == nil {
			return out
		}
		out = append(out, m)
	}
}

// conferences sends requests for a conference URI to the Focus and the
// rest to next (nil: 405).
func conferences(fm *focusManager, next sipnode.Handler) sipnode.Handler {
	return func(peer *access.PeerIdentity, req *sip.Request, tx sip.ServerTransaction) {
		// Conferences of the home domains are served here; another
		// organisation's are routed like any request for its domain.
		if _, ok := meetingOf(req); ok && fm.home(req.Recipient.Host) {
			fm.serve(peer, req, tx)
			return
		}
		if next == nil {
			fm.respond(tx, req, 405, "Method Not Allowed", sip.NewHeader("Allow", "REGISTER, INVITE, ACK, BYE, CANCEL, MESSAGE, OPTIONS, UPDATE, INFO, SERVICE, SUBSCRIBE, NOTIFY"))
			return
		}
		next(peer, req, tx)
	}
}

// Ready is nil when the core can serve: listening, not draining, store answering.
func (s *Server) Ready() error {
	if s.sip == nil || s.sip.Draining() {
		return errors.New("draining")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.store.Ping(ctx); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// Store is the core's store.
func (s *Server) Store() *store.Store { return s.store }

// Config is the configuration in force.
func (s *Server) Config() Config { return *s.cfg.Load() }

// secret is the TURN secret credentials are issued under now.
func (s *Server) secret() []byte { return *s.turnSecret.Load() }

// Reload swaps in a new, already validated configuration. Trusted edges,
// the log level, the TURN settings and the TURN secret (the file is read
// again: credentials from now on are issued under what it holds; the
// edges honour the secret before a change for credentials already out)
// change at once; listener, TLS and store settings need a restart, which
// is logged.
func (s *Server) Reload(cfg Config) error {
	old := s.cfg.Load()
	if keys := restartOnly(*old, cfg); len(keys) > 0 {
		s.log.Warn("reload: these settings change only on restart; keeping the running values", "keys", strings.Join(keys, ","))
		cfg.Metrics, cfg.SIP, cfg.TLS, cfg.Store, cfg.HTTPS = old.Metrics, old.SIP, old.TLS, old.Store, old.HTTPS
	}
	secret, err := access.LoadTURNSecret(cfg.TURN.SecretFile)
	if err != nil {
		s.metrics.reloads.WithLabelValues("rejected").Inc()
		s.log.Error("reload rejected: turn.secret_file; keeping the running config", "error", err)
		return err
	}
	rotated := !bytes.Equal(secret, s.secret())
	s.turnSecret.Store(&secret)
	s.allow.Set(cfg.TrustedEdges)
	setLevel(s.deps.Level, cfg.Log.Level)
	s.cfg.Store(&cfg)
	s.metrics.reloads.WithLabelValues("applied").Inc()
	s.log.Info("core config applied", "trusted_edges", cfg.TrustedEdges, "turn_secret_rotated", rotated)
	return nil
}

// ReloadRejected counts a reload that failed validation.
func (s *Server) ReloadRejected() { s.metrics.reloads.WithLabelValues("rejected").Inc() }

// Addr returns the SIP MTLS and metrics listener addresses.
func (s *Server) Addr() (sipAddr, metricsAddr string) { return s.sip.Addr(), s.ops.Addr() }

// UsersAddr is the users' TLS SIP listener's address ("" when off).
func (s *Server) UsersAddr() string { return s.sip.UserAddr() }

// HTTPSAddr is the HTTPS API listener's address.
func (s *Server) HTTPSAddr() string { return s.api.Addr() }

// Drain stops accepting edge connections and new requests and waits for
// requests in progress.
func (s *Server) Drain(ctx context.Context) error { return s.sip.Drain(ctx) }

// Close stops everything.
func (s *Server) Close() error {
	var errs []error
	if s.stopSweep != nil {
		s.stopSweep()
		<-s.sweepDone
	}
	if s.stopMCUs != nil {
		s.stopMCUs()
		s.mcuDone.Wait()
		s.reporter.client.CloseIdleConnections()
	}
	if s.focus != nil {
		s.focus.close()
	}
	if s.sip != nil {
		errs = append(errs, s.sip.Close())
	}
	if s.api != nil {
		errs = append(errs, s.api.Close())
	}
	if s.ops != nil {
		errs = append(errs, s.ops.Close())
	}
	if s.store != nil {
		errs = append(errs, s.store.Close())
	}
	return errors.Join(errs...)
}

func setLevel(v *slog.LevelVar, name string) {
	if l, err := lifecycle.ParseLevel(name); err == nil && v != nil {
		v.Set(l)
	}
}
