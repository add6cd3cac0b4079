package edge

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/emiago/sipgo/sip"

	"portcullis/access"
	"portcullis/internal/sipnode"
	"portcullis/policy"
)

// The edge's policy chain (STYLE.md): every request the Access Edge serves
// passes these links in this order, written here and nowhere else, and
// logged at start. A link answers the request itself (a refusal) or passes
// it on; the last step routes it (route).
//
//	sanity      RFC 3261 checks on what comes from outside (users, partners)
//	rate        per-source request rate of remote users' connections
//	trust       the trust header is removed from what comes from outside
//	access      the remote/federated user switches
//	federation  partner admission both ways: table, blocked, discovery,
//	            certificate names against the From domain, discovered
//	            partners' rate and contact cap
//	im_filter   the Intelligent IM Filter on IMs and file-transfer offers
func (a *accessEdge) chain() handler {
	links := []policyLink{
		{"sanity", a.sanityLink},
		{"rate", a.rateLink},
		{"trust", a.trustLink},
		{"access", a.accessLink},
		{"federation", a.federationLink},
		{"im_filter", a.imFilterLink},
	}
	h := handler(a.route)
	for _, l := range slices.Backward(links) {
		h = l.wrap(h)
	}
	names := make([]string, len(links))
	for i, l := range links {
		names[i] = l.name
	}
	a.log.Info("policy chain", "links", strings.Join(names, " > "))
	return h
}

// source says where a request came from.
type source int

const (
	fromUser    source = iota + 1 // a remote user's TLS connection
	fromPartner                   // a federation partner's edge (mutual TLS)
	fromCore                      // a core node, over the internal link
)

// msg is one request on its way through the chain.
type msg struct {
	req  *sip.Request
	tx   sip.ServerTransaction
	peer *access.PeerIdentity
	from source
	// partner is set by the federation link for a request from a partner
	// (inbound) or to one (outbound: a home user's request for a partner's
	// domain).
	partner *policy.Partner
}

type handler func(*msg)

type policyLink struct {
	name string
	wrap func(next handler) handler
}

func (a *accessEdge) handle(peer *access.PeerIdentity, req *sip.Request, tx sip.ServerTransaction) {
	m := &msg{req: req, tx: tx, peer: peer, from: fromCore}
	switch {
	case peer.Partner:
		m.from = fromPartner
	case peer.Name == "":
		m.from = fromUser
	}
	a.policy(m)
}

// publicName is the edge's name as the outside knows it (never the
// internal host name: topology hiding).
func (a *accessEdge) publicName() string {
	if a.cfg.PublicName != "" {
		return a.cfg.PublicName
	}
	host, _, err := net.SplitHostPort(a.external)
	if err != nil {
		return a.external
	}
	return host
}

// route is the end of the chain: where the request goes.
func (a *accessEdge) route(m *msg) {
	switch m.from {
	case fromUser:
		a.fromOutside(m.req, m.tx)
	case fromPartner:
		a.fromPartner(m)
	default:
		a.fromCore(m)
	}
}

func (a *accessEdge) sanityLink(next handler) handler {
	return func(m *msg) {
		if m.from != fromCore {
			if code, reason, why := a.sane(m.req); code != 0 {
				a.refuse(m.tx, m.req, code, reason, why)
				return
			}
		}
		next(m)
	}
}

// rateLink limits remote users per source address. Partners' edges carry
// many users each: a direct partner is not limited here, a discovered one
// by the federation link.
func (a *accessEdge) rateLink(next handler) handler {
	return func(m *msg) {
		if m.from == fromUser {
			if src, err := netip.ParseAddrPort(m.req.Source()); err == nil && !a.rate.Allow(src.Addr()) {
				a.refuse(m.tx, m.req, 503, "Service Unavailable (rate)", "rate_limited", sip.NewHeader("Retry-After", "5"))
				return
			}
		}
		next(m)
	}
}

func (a *accessEdge) trustLink(next handler) handler {
	return func(m *msg) {
		if m.from != fromCore {
			if n := sipnode.RemoveAll(m.req, access.TrustHeader); n > 0 {
				a.quiet.Warn("trust header from outside removed", "count", n, "source", m.req.Source())
			}
		}
		next(m)
	}
}

// anonymousDomain is the From domain of anonymous meeting guests (the core
// checks their conference key).
const anonymousDomain = "anonymous.invalid"

func (a *accessEdge) accessLink(next handler) handler {
	return func(m *msg) {
		if m.from == fromUser {
			cfg := a.fed.Config()
			anonymous := strings.EqualFold(m.req.From().Address.Host, anonymousDomain)
			switch {
			case anonymous && !cfg.AllowAnonymous:
				a.refuse(m.tx, m.req, 403, "Forbidden (anonymous users are off)", "anonymous_off")
				return
			case !anonymous && !cfg.AllowRemoteUsers:
				a.refuse(m.tx, m.req, 403, "Forbidden (remote user access is off)", "remote_users_off")
				return
			}
		}
		next(m)
	}
}

// imFilterLink screens IM bodies (MESSAGE) and file-transfer offers (SDP
// of an INVITE, the legacy text/x-msmsgsinvite) crossing the edge, in the
// directions configured: inbound from remote users and partners, outbound
// from the core.
func (a *accessEdge) imFilterLink(next handler) handler {
	return func(m *msg) {
		f := a.filter.Load()
		cfg := f.Config()
		dir := "inbound"
		if m.from == fromCore {
			dir = "outbound"
		}
		if !cfg.Enabled || (dir == "inbound" && !cfg.Inbound) || (dir == "outbound" && !cfg.Outbound) || len(m.req.Body()) == 0 {
			next(m)
			return
		}
		screened := m.req.Method == sip.MESSAGE || m.req.Method == sip.INVITE
		if h := m.req.GetHeader("Content-Encoding"); screened && h != nil && !strings.EqualFold(strings.TrimSpace(h.Value()), "identity") {
			// A compressed body the filter would screen cannot be, so it
			// does not pass (RFC 3261 §21.4.13: 415, saying what is accepted).
			a.filtered(dir, "refused")
			a.log.Info("im filter refused a message", "direction", dir, "source", m.req.Source(), "content_encoding", h.Value())
			a.refuse(m.tx, m.req, 415, "Unsupported Media Type (the IM filter reads no Content-Encoding)", "im_filter_unreadable",
				sip.NewHeader("Accept-Encoding", "identity"))
			return
		}
		ct := ""
		if h := m.req.ContentType(); h != nil {
			ct = h.Value()
		}
		var v policy.Verdict
		var err error
		switch m.req.Method {
		case sip.MESSAGE:
			v, err = f.Message(ct, m.req.Body())
		case sip.INVITE:
			if strings.EqualFold(strings.TrimSpace(strings.Split(ct, ";")[0]), "application/sdp") {
				v = f.SDP(m.req.Body())
			} else {
				v, err = f.Message(ct, m.req.Body())
			}
		}
		if err != nil {
			a.filtered(dir, "refused")
			reason := "Bad Request (message body cannot be screened)"
			if errors.Is(err, policy.ErrBodyNotUTF8) {
				reason = "Bad Request (message body is not valid UTF-8)"
			}
			a.log.Info("im filter refused a message", "direction", dir, "source", m.req.Source(), "error", err)
			a.refuse(m.tx, m.req, 400, reason, "im_filter_unreadable")
			return
		}
		if v.Action == "" {
			next(m)
			return
		}
		a.filtered(dir, v.Action)
		if v.Action == policy.ActionBlock {
			a.log.Info("im filter blocked a message", "direction", dir, "source", m.req.Source(), "why", v.Reason,
				"from", m.req.From().Address.String(), "to", m.req.Recipient.String())
			a.refuse(m.tx, m.req, 403, "Forbidden (IM filter: "+v.Reason+" blocked)", "im_filter_block",
				sip.NewHeader("Warning", `399 `+a.publicName()+` "The message was blocked by the IM filter: `+v.Reason+`"`))
			return
		}
		if v.Changed {
			m.req.SetBody(v.Body)
		}
		next(m)
	}
}
