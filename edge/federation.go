package edge

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"

	"portcullis/access"
	"portcullis/internal/sipnode"
	"portcullis/policy"
)

// Federation: partner edges connect to the external listener with a
// certificate from the partner trust roots (inbound); home users' requests
// for a partner's domain leave through a separate SIP user agent that dials
// the partner's edge with the edge's public certificate (outbound). Both
// directions pass the federation link of the policy chain.

// partnerAgents are the user agents that dial partners' edges: one per
// partner domain, so that a connection verified for one domain (its
// certificate must name it) carries only that domain's requests.
type partnerAgents struct {
	roots    atomic.Pointer[x509.CertPool]
	cert     func() *tls.Certificate // the public certificate, presented to partners
	hostname string                  // our public name, in Via
	max      int                     // message size limit
	log      *slog.Logger

	// handle serves requests a partner sends on a connection we dialled,
	// for these methods.
	handle  sipnode.Handler
	methods []string

	mu        sync.Mutex
	agents    map[string]*sipnode.Node
	lastUse   map[string]time.Time            // domain → last request routed to it (agent)
	used      map[string]map[string]time.Time // domain → partner edge address → last request
	maxAgents int                             // 0: maxPartnerAgents
	closed    bool
}

// keepIdle is how long a partner connection is kept alive after its last
// request.
const keepIdle = 10 * time.Minute

// touch records a request sent to a partner's edge address.
func (p *partnerAgents) touch(domain, addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.used == nil {
		p.used = map[string]map[string]time.Time{}
	}
	if p.used[domain] == nil {
		p.used[domain] = map[string]time.Time{}
	}
	p.used[domain][addr] = time.Now()
}

// keepalive sends an RFC 5626 §4.4.1 CRLF ping on every partner connection
// used in the last keepIdle, every interval(), until ctx ends.
func (p *partnerAgents) keepalive(ctx context.Context, interval func() time.Duration) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval()):
		}
		type conn struct{ domain, addr string }
		var live []conn
		var nodes []*sipnode.Node
		p.mu.Lock()
		for d, addrs := range p.used {
			for a, last := range addrs {
				if time.Since(last) > keepIdle {
					delete(addrs, a)
					continue
				}
				live = append(live, conn{d, a})
				nodes = append(nodes, p.agents[d])
			}
		}
		p.mu.Unlock()
		for i, c := range live {
			if nodes[i] == nil {
				continue
			}
			sc, err := nodes[i].UA.TransportLayer().GetConnection("tls", c.addr)
			if err != nil || sc == nil {
				continue // closed: the next request dials again
			}
			if w, ok := sc.(interface{ Write([]byte) (int, error) }); ok {
				if _, err := w.Write([]byte("\r\n\r\n")); err != nil {
					p.log.Info("partner keepalive failed", "domain", c.domain, "address", c.addr, "error", err)
				}
			}
		}
	}
}

// maxPartnerAgents bounds the agents kept. Past it the agent of the
// domain that has gone longest without a request makes room, if that is
// longer than keepIdle; otherwise a new domain is refused (503) until one
// has. (New domains used to be refused until a restart: users sending to
// a thousand discovered domains would have cut federation with any other.)
const maxPartnerAgents = 1000

// agent returns the user agent for a partner domain, creating it.
func (p *partnerAgents) agent(domain string) (*sipnode.Node, error) {
	domain = strings.ToLower(domain)
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errors.New("edge closing")
	}
	if p.lastUse == nil {
		p.lastUse = map[string]time.Time{}
	}
	if n := p.agents[domain]; n != nil {
		p.lastUse[domain] = now
		return n, nil
	}
	limit := p.maxAgents
	if limit <= 0 {
		limit = maxPartnerAgents
	}
	if len(p.agents) >= limit {
		idlest := ""
		for d, t := range p.lastUse {
			if idlest == "" || t.Before(p.lastUse[idlest]) {
				idlest = d
			}
		}
		if idlest == "" || now.Sub(p.lastUse[idlest]) <= keepIdle {
			return nil, fmt.Errorf("%d partner domains in use in the last %s", limit, keepIdle)
		}
		old := p.agents[idlest]
		delete(p.agents, idlest)
		delete(p.lastUse, idlest)
		delete(p.used, idlest)
		if err := old.Close(); err != nil {
			p.log.Warn("closing an idle partner agent", "domain", idlest, "error", err)
		}
		p.log.Info("idle partner agent closed to make room", "domain", idlest, "for", domain)
	}
	n, err := sipnode.New(sipnode.Config{
		Name: "portcullis-edge", Hostname: p.hostname, MaxMessage: p.max,
		ClientTLS: p.clientConfig(domain), Log: p.log.With("partner", domain),
		// The partner's edge sends requests of dialogs we opened back over
		// our connection: its certificate named domain when we dialled.
		DialedPeer: func(source string) (*access.PeerIdentity, bool) {
			return &access.PeerIdentity{Partner: true, Names: []string{domain}, RemoteAddr: source}, true
		},
	})
	if err != nil {
		return nil, err
	}
	for _, m := range p.methods {
		n.Handle(sip.RequestMethod(m), p.handle)
	}
	n.Serve()
	p.agents[domain] = n
	p.lastUse[domain] = now
	return n, nil
}

// nodes returns the partners' agents.
func (p *partnerAgents) nodes() []*sipnode.Node {
	p.mu.Lock()
	defer p.mu.Unlock()
	ns := make([]*sipnode.Node, 0, len(p.agents))
	for _, n := range p.agents {
		ns = append(ns, n)
	}
	return ns
}

// Close closes every agent.
func (p *partnerAgents) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	var errs []error
	for _, n := range p.agents {
		errs = append(errs, n.Close())
	}
	return errors.Join(errs...)
}

// clientConfig presents the edge's public certificate and checks the
// partner's: it must chain to the partner trust roots for server use and
// name the partner's domain (policy.DomainNamedBy). That check replaces
// Go's host name check (we dial the addresses we resolved).
func (p *partnerAgents) clientConfig(domain string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return p.cert(), nil
		},
		InsecureSkipVerify: true, // replaced by VerifyConnection below
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, names, err := access.VerifyCerts(cs.PeerCertificates, p.roots.Load(), x509.ExtKeyUsageServerAuth)
			if err != nil {
				return fmt.Errorf("partner edge certificate: %w", err)
			}
			if !policy.DomainNamedBy(names, domain) {
				return fmt.Errorf("partner edge certificate names %v, not %s", names, domain)
			}
			return nil
		},
	}
}

// federationLink admits partner traffic both ways and marks the message
// with the partner.
func (a *accessEdge) federationLink(next handler) handler {
	return func(m *msg) {
		switch {
		case m.from == fromPartner:
			if !a.admitPartner(m) {
				return
			}
		case m.from == fromCore && m.req.Route() == nil && !a.home(m.req.Recipient.Host):
			if !a.admitOutbound(m) {
				return
			}
		}
		next(m)
	}
}

func (a *accessEdge) home(domain string) bool {
	return slices.Contains(a.cfg.HomeDomains, strings.ToLower(domain))
}

// admitPartner checks a request from a partner's edge: the From domain is
// not ours, the certificate speaks for it, the policy admits it, the
// target is a home user, and a discovered partner is within its limits.
func (a *accessEdge) admitPartner(m *msg) bool {
	req := m.req
	fromDomain := strings.ToLower(req.From().Address.Host)
	inDialog := false
	if r := req.Route(); r != nil {
		_, inDialog = a.tokens.OpenRoutes(r.Address.User)
	}
	switch {
	case a.home(fromDomain):
		a.refusePartner(m, 403, "Forbidden (a partner cannot send as a home domain)", "partner_spoof_home", fromDomain)
		return false
	case !policy.DomainNamedBy(m.peer.Names, fromDomain):
		a.refusePartner(m, 403, "Forbidden (certificate does not name the From domain)", "partner_cert_mismatch", fromDomain)
		return false
	case !inDialog && !a.home(req.Recipient.Host):
		a.refusePartner(m, 403, "Forbidden (not a domain served here)", "foreign_domain", fromDomain)
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.fed.Config().Discovery.Timeout)
	defer cancel()
	p, err := a.fed.Admit(ctx, fromDomain)
	if err != nil {
		a.refusePartner(m, 403, "Forbidden (domain not federated: "+fedReason(err)+")", "partner_"+fedReason(err), fromDomain)
		return false
	}
	if p.Kind == policy.AutoFederation {
		contact := "sip:" + strings.ToLower(req.Recipient.User+"@"+req.Recipient.Host)
		if r := req.To(); r != nil {
			contact = "sip:" + strings.ToLower(r.Address.User+"@"+r.Address.Host)
		}
		if err := a.fed.AllowDiscovered(fromDomain, contact); err != nil {
			if errors.Is(err, policy.ErrDiscoveredRate) {
				a.refusePartner(m, 503, "Service Unavailable (partner rate)", "discovered_rate", fromDomain, sip.NewHeader("Retry-After", "1"))
			} else {
				a.refusePartner(m, 403, "Forbidden (too many distinct contacts)", "discovered_contact_cap", fromDomain)
			}
			return false
		}
	}
	m.partner = &p
	a.federated("inbound", p.Kind.String())
	a.log.Debug("federated request admitted", "direction", "inbound", "domain", p.Domain, "source_type", p.Kind.String(), "method", req.Method)
	return true
}

// admitOutbound checks a home user's request for another domain (the core
// authenticated the user).
func (a *accessEdge) admitOutbound(m *msg) bool {
	req := m.req
	domain := strings.ToLower(req.Recipient.Host)
	if !a.home(req.From().Address.Host) {
		a.refuse(m.tx, req, 403, "Forbidden (sender is not a home user)", "outbound_foreign_sender")
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.fed.Config().Discovery.Timeout)
	defer cancel()
	p, err := a.fed.Admit(ctx, domain)
	if err != nil {
		a.log.Info("federation refused", "direction", "outbound", "domain", domain, "why", err)
		a.refuse(m.tx, req, 403, "Forbidden (domain not federated: "+fedReason(err)+")", "outbound_"+fedReason(err))
		return false
	}
	m.partner = &p
	a.federated("outbound", p.Kind.String())
	a.log.Debug("federated request admitted", "direction", "outbound", "domain", p.Domain, "source_type", p.Kind.String(), "method", req.Method)
	return true
}

func fedReason(err error) string {
	switch {
	case errors.Is(err, policy.ErrFederationOff):
		return "federation_off"
	case errors.Is(err, policy.ErrBlockedDomain):
		return "blocked"
	case errors.Is(err, policy.ErrNotPartner):
		return "not_partner"
	case errors.Is(err, policy.ErrNotDiscovered):
		return "not_discovered"
	}
	return "refused"
}

func (a *accessEdge) refusePartner(m *msg, code int, reason, why, domain string, hdrs ...sip.Header) {
	a.log.Info("partner request refused", "domain", domain, "names", m.peer.Names, "why", why, "source", m.req.Source())
	a.refuse(m.tx, m.req, code, reason, why, hdrs...)
}

// trustValue is the trust header for what a partner sends inside.
func (a *accessEdge) partnerTrust(p *policy.Partner) string {
	verified := "unverified"
	if p.Verified {
		verified = "verified"
	}
	return "ms-source-type=" + p.Kind.String() + ";ms-ep-fqdn=" + a.hostname + ";ms-source-verified-user=" + verified +
		";ms-source-network=federation;ms-remote-fqdn=" + p.Domain
}

// fromPartner forwards a partner's request to the core, as for a remote
// user: Routes naming us removed, in-dialog routes restored, Record-Route
// for dialogs, the trust header saying which partner it is.
func (a *accessEdge) fromPartner(m *msg) {
	req, tx := m.req, m.tx
	for route := req.Route(); route != nil; route = req.Route() {
		if _, ok := a.tokens.OpenRoutes(route.Address.User); ok {
			a.inDialogFromOutside(req, route, tx, a.partnerTrust(m.partner))
			return
		}
		if !a.namesUs(route.Address) {
			a.refuse(tx, req, 403, "Forbidden (Route is not this edge's)", "foreign_route")
			return
		}
		req.RemoveHeader("Route")
	}
	out := req.Clone()
	if !sipnode.DecMaxForwards(out) {
		a.refuse(tx, req, 483, "Too Many Hops", "max_forwards")
		return
	}
	out.AppendHeader(sip.NewHeader(access.TrustHeader, a.partnerTrust(m.partner)))
	var fix func(*sip.Response)
	if req.Method == sip.INVITE || req.Method == sip.SUBSCRIBE {
		fix = a.recordDialog(req, out)
	}
	out.SetDestination(a.coreAddr)
	out.SetTransport("TLS")
	a.relay(req, out, tx, fix)
}

// toPartner sends a home user's request to the partner's edge, trying its
// addresses in RFC 3263 order until one takes the request; internal Vias
// and Record-Routes are hidden as for remote users.
func (a *accessEdge) toPartner(m *msg) {
	req, tx := m.req, m.tx
	ctx, cancel := context.WithTimeout(context.Background(), a.fed.Config().Discovery.Timeout)
	targets, err := a.fed.Targets(ctx, *m.partner)
	cancel()
	if err != nil {
		a.log.Info("partner edge not found", "domain", m.partner.Domain, "error", err)
		a.refuse(tx, req, 504, "Server Time-out (partner edge not found)", "partner_unresolved")
		return
	}
	out := req.Clone()
	if !sipnode.DecMaxForwards(out) {
		a.refuse(tx, req, 483, "Too Many Hops", "max_forwards")
		return
	}
	sipnode.RemoveAll(out, "Via")
	sipnode.RemoveAll(out, access.TrustHeader)
	out.SetTransport("TLS")
	node, err := a.partners.agent(m.partner.Domain)
	if err != nil {
		a.log.Warn("no user agent for the partner", "domain", m.partner.Domain, "error", err)
		a.refuse(tx, req, 503, "Service Unavailable", "partner_unreachable", sip.NewHeader("Retry-After", "30"))
		return
	}
	for i, t := range targets {
		o := out
		if i < len(targets)-1 {
			o = out.Clone()
		}
		var fix func(*sip.Response)
		if req.IsInvite() || req.Method == sip.SUBSCRIBE {
			fix = a.hideInternalRoutes(o, a.tokens.MakePartner(m.partner.Domain, t.Addr))
		}
		o.SetDestination(t.Addr)
		if a.forward(node, req, o, tx, true, fix) != errNextHop {
			a.partners.touch(m.partner.Domain, t.Addr)
			return
		}
		a.log.Info("partner edge address failed", "domain", m.partner.Domain, "address", t.Addr, "left", len(targets)-1-i)
	}
	a.refuse(tx, req, 503, "Service Unavailable (partner edge unreachable)", "partner_unreachable", sip.NewHeader("Retry-After", "30"))
}
