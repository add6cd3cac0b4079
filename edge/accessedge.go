package edge

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"portcullis/access"
	"portcullis/internal/sipnode"
)

// accessEdge is the Access Edge role: remote users' requests go to the
// core over the mutual-TLS link, and the core's requests to remote users go
// out over the user's own connection. The edge authenticates nobody: the
// core challenges every request. It hides internal Vias on what leaves,
// strips any trust header that arrives from outside and sets its own on
// what goes inside, and refuses domains it does not serve (no open relay).
type accessEdge struct {
	node     *sipnode.Node
	cfg      ExternalConfig
	hostname string // the edge's internal name, in the trust header
	coreAddr string
	tokens   *sipnode.FlowTokens
	log      *slog.Logger
	refused  func(reason string)
}

// timerF bounds a non-INVITE transaction; INVITEs get Timer C.
const (
	timerF = 32 * time.Second
	timerC = 3 * time.Minute
)

func (a *accessEdge) handle(peer *access.PeerIdentity, req *sip.Request, tx sip.ServerTransaction) {
	if peer.Name == "" {
		a.fromOutside(req, tx)
		return
	}
	a.fromCore(req, tx)
}

func (a *accessEdge) refuse(tx sip.ServerTransaction, req *sip.Request, code int, reason, why string, hdrs ...sip.Header) {
	a.log.Info("request refused", "method", req.Method, "status", code, "why", why, "source", req.Source(), "uri", req.Recipient.String())
	a.refused(why)
	if tx == nil || req.Method == sip.ACK {
		return
	}
	res := sip.NewResponseFromRequest(req, code, reason, nil)
	for _, h := range hdrs {
		res.AppendHeader(h)
	}
	_ = tx.Respond(res)
}

// methodNotAllowed answers methods off the allow list (405, RFC 3261 §21.4.6).
func (a *accessEdge) methodNotAllowed(req *sip.Request, tx sip.ServerTransaction) {
	a.refuse(tx, req, 405, "Method Not Allowed", "method_not_allowed", sip.NewHeader("Allow", strings.Join(a.cfg.AllowedMethods, ", ")))
}

// fromOutside forwards a remote user's request to the core.
func (a *accessEdge) fromOutside(req *sip.Request, tx sip.ServerTransaction) {
	if n := sipnode.RemoveAll(req, access.TrustHeader); n > 0 {
		a.log.Warn("trust header from outside removed", "count", n, "source", req.Source())
	}
	if req.Route() != nil {
		// Dialogs through the edge (Record-Route rewriting) are the next step.
		a.refuse(tx, req, 501, "Not Implemented (in-dialog requests through the edge)", "in_dialog_not_yet")
		return
	}
	if !slices.Contains(a.cfg.HomeDomains, strings.ToLower(req.Recipient.Host)) {
		a.refuse(tx, req, 403, "Forbidden (not a domain served here)", "foreign_domain")
		return
	}
	out := req.Clone()
	if !sipnode.DecMaxForwards(out) {
		a.refuse(tx, req, 483, "Too Many Hops", "max_forwards")
		return
	}
	out.AppendHeader(sip.NewHeader(access.TrustHeader, "ms-source-type=InternetUser;ms-ep-fqdn="+a.hostname))
	if req.Method == sip.REGISTER {
		// RFC 3327: requests for this binding come back through us, and the
		// token says over which connection.
		out.PrependHeader(sip.NewHeader("Path", "<"+a.internalURI(a.tokens.Make(req.Source()))+">"))
	}
	out.SetDestination(a.coreAddr)
	out.SetTransport("TLS")
	a.forward(req, out, tx, false)
}

// internalURI is a loose-routing URI of our internal listener with user.
func (a *accessEdge) internalURI(user string) string {
	return "sip:" + user + "@" + a.node.Addr() + ";transport=tls;lr"
}

// fromCore sends a request of the core's to a remote user over the flow
// our Route names, hiding the internal Vias.
func (a *accessEdge) fromCore(req *sip.Request, tx sip.ServerTransaction) {
	route := req.Route()
	if route == nil {
		a.refuse(tx, req, 403, "Forbidden (no route through this edge)", "no_route")
		return
	}
	flow, ok := a.tokens.Open(route.Address.User)
	if !ok {
		a.refuse(tx, req, 403, "Forbidden (Route is not this edge's)", "foreign_route")
		return
	}
	out := req.Clone()
	out.RemoveHeader("Route") // ours, the top one
	if !sipnode.DecMaxForwards(out) {
		a.refuse(tx, req, 483, "Too Many Hops", "max_forwards")
		return
	}
	sipnode.RemoveAll(out, "Via") // topology hiding: only our Via leaves
	sipnode.RemoveAll(out, access.TrustHeader)
	out.SetDestination(flow)
	out.SetTransport("TLS")
	a.forward(req, out, tx, true)
}

// forward runs a client transaction for out and relays its responses to
// the server transaction of req. When hide is set, the responses are
// rebuilt on req's own Vias (the ones removed from out).
func (a *accessEdge) forward(req, out *sip.Request, tx sip.ServerTransaction, hide bool) {
	timeout := timerF
	if req.IsInvite() {
		timeout = timerC
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if req.IsAck() {
		if err := a.node.Client.WriteRequest(out, sipgo.ClientRequestAddVia); err != nil {
			a.log.Info("forwarding ACK failed", "error", err)
		}
		return
	}
	ctx2, err := a.node.Client.TransactionRequest(ctx, out, sipgo.ClientRequestAddVia)
	if err != nil {
		a.log.Info("forwarding failed", "method", req.Method, "destination", out.Destination(), "error", err)
		a.refuse(tx, req, 503, "Service Unavailable", "next_hop_unreachable", sip.NewHeader("Retry-After", "10"))
		return
	}
	defer ctx2.Terminate()
	for {
		select {
		case res := <-ctx2.Responses():
			if res.StatusCode == 100 {
				continue
			}
			up := res.Clone()
			up.RemoveHeader("Via")
			if hide {
				up = restore(req, res)
			}
			if err := tx.Respond(up); err != nil {
				a.log.Warn("relaying response failed", "status", res.StatusCode, "error", err)
			}
			if !res.IsProvisional() {
				return
			}
		case <-ctx2.Done():
			a.refuse(tx, req, 408, "Request Timeout", "no_answer")
			return
		case <-ctx.Done():
			a.refuse(tx, req, 408, "Request Timeout", "no_answer")
			return
		}
	}
}

// restore builds the response to req from a response to our hidden copy:
// req's own Via, From, Call-ID and CSeq; the To (with its tag), body and
// other headers of res.
func restore(req *sip.Request, res *sip.Response) *sip.Response {
	up := sip.NewResponseFromRequest(req, res.StatusCode, res.Reason, res.Body())
	skip := map[string]bool{"via": true, "from": true, "to": true, "call-id": true, "cseq": true, "content-length": true}
	if to := res.To(); to != nil {
		up.ReplaceHeader(sip.HeaderClone(to))
	}
	for _, h := range res.Headers() {
		if !skip[strings.ToLower(h.Name())] {
			up.AppendHeader(sip.HeaderClone(h))
		}
	}
	return up
}
