package edge

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"portcullis/access"
	"portcullis/internal/logthrottle"
	"portcullis/internal/sipnode"
	"portcullis/policy"
)

// accessEdge is the Access Edge role: remote users' requests go to the
// core over the mutual-TLS link, and the core's requests to remote users go
// out over the user's own connection. The edge authenticates nobody: the
// core challenges every request. It hides internal Vias on what leaves,
// strips any trust header that arrives from outside and sets its own on
// what goes inside, and refuses domains it does not serve (no open relay).
type accessEdge struct {
	node     *sipnode.Node
	internal string // our internal listener's address (in Path and Record-Route)
	external string // our external listener's address (what remote users see)
	cfg      ExternalConfig
	hostname string // the edge's internal name, in the trust header
	coreAddr string
	tokens   *sipnode.FlowTokens
	contacts *contactFlows         // where each remote user's contact last registered from
	rate     *policy.SourceLimiter // requests per source address
	log      *slog.Logger
	quiet    *logthrottle.Logger // for lines anyone outside can cause per request
	refused  func(reason string)

	policy    handler // the policy chain (chain.go), built once
	fed       *policy.Federation
	filter    atomic.Pointer[policy.IMFilter]
	partners  *partnerAgents // dial partners' edges
	federated func(direction, sourceType string)
	filtered  func(direction, action string)
}

// errNextHop: the next hop could not be reached (nothing was answered).
var errNextHop = errors.New("next hop unreachable")

// timerF bounds a non-INVITE transaction; INVITEs get Timer C.
const (
	timerF = 32 * time.Second
	timerC = 3 * time.Minute
)

func (a *accessEdge) refuse(tx sip.ServerTransaction, req *sip.Request, code int, reason, why string, hdrs ...sip.Header) {
	a.quiet.Info("request refused", "method", req.Method, "status", code, "why", why, "source", req.Source(), "uri", req.Recipient.String())
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

// answerOptions answers an OPTIONS addressed to the edge itself (a
// client's keep-alive or capability query, RFC 3261 §11) with what it lets
// through; nothing goes inside.
func (a *accessEdge) answerOptions(req *sip.Request, tx sip.ServerTransaction) {
	res := sip.NewResponseFromRequest(req, 200, "OK", nil)
	res.AppendHeader(sip.NewHeader("Allow", strings.Join(a.cfg.AllowedMethods, ", ")))
	res.AppendHeader(sip.NewHeader("Accept", "application/sdp"))
	if err := tx.Respond(res); err != nil {
		a.log.Info("answering OPTIONS failed", "error", err)
	}
}

// fromOutside forwards a remote user's request to the core (after the
// policy chain's sanity, rate, trust and access links).
func (a *accessEdge) fromOutside(req *sip.Request, tx sip.ServerTransaction) {
	// §16.4: a Route naming this proxy (a client's outbound proxy) is
	// removed; a route set we issued means the request is in a dialog; any
	// other Route is refused (no relaying where a client points).
	for route := req.Route(); route != nil; route = req.Route() {
		if _, ok := a.tokens.OpenRoutes(route.Address.User); ok {
			a.inDialogFromOutside(req, route, tx, a.userTrust())
			return
		}
		if !a.namesUs(route.Address) {
			a.refuse(tx, req, 403, "Forbidden (Route is not this edge's)", "foreign_route")
			return
		}
		req.RemoveHeader("Route")
	}
	if req.Method == sip.OPTIONS && req.Recipient.User == "" && a.namesUs(req.Recipient) {
		a.answerOptions(req, tx)
		return
	}
	if !a.home(req.Recipient.Host) {
		// Another domain: only a partner the policy admits (the core
		// authenticates the user, then routes the request back out through
		// the federation link). No open relay.
		if err := a.federates(req.Recipient.Host); err != nil {
			if errors.Is(err, policy.ErrFederationOff) || errors.Is(err, policy.ErrNotPartner) {
				a.refuse(tx, req, 403, "Forbidden (not a domain served here)", "foreign_domain")
			} else {
				a.refuse(tx, req, 403, "Forbidden (domain not federated: "+fedReason(err)+")", "outbound_"+fedReason(err))
			}
			return
		}
	}
	out := req.Clone()
	if !sipnode.DecMaxForwards(out) {
		a.refuse(tx, req, 483, "Too Many Hops", "max_forwards")
		return
	}
	out.AppendHeader(sip.NewHeader(access.TrustHeader, a.userTrust()))
	var fix func(*sip.Response)
	switch req.Method {
	case sip.REGISTER:
		// RFC 3327: requests for this binding come back through us, and the
		// token says over which connection. A Path from outside is not
		// honoured: nothing from outside shapes a route inside.
		if n := sipnode.RemoveAll(out, "Path"); n > 0 {
			a.log.Warn("Path from outside removed", "count", n, "source", req.Source())
		}
		flow := a.node.Flow(req.Source())
		out.PrependHeader(sip.NewHeader("Path", "<"+a.internalURI(a.tokens.Make(flow))+">"))
		fix = func(res *sip.Response) {
			if res.IsSuccess() {
				a.contacts.learn(req, res, flow, time.Now())
			}
		}
	case sip.INVITE, sip.SUBSCRIBE:
		fix = a.recordDialog(req, out)
	}
	out.SetDestination(a.coreAddr)
	out.SetTransport("TLS")
	a.relay(req, out, tx, fix)
}

// federates says whether the policy admits a partner domain (nil) or why not.
func (a *accessEdge) federates(domain string) error {
	ctx, cancel := context.WithTimeout(context.Background(), a.fed.Config().Discovery.Timeout)
	defer cancel()
	_, err := a.fed.Admit(ctx, domain)
	return err
}

// recordDialog record-routes a dialog-creating request from outside:
// requests of the dialog from inside come back through our internal
// listener to the caller's connection, and what the caller sees of the
// route set is one URI of ours (the fix returned, hideRoutes).
func (a *accessEdge) recordDialog(req, out *sip.Request) func(*sip.Response) {
	caller := a.node.Flow(req.Source())
	out.PrependHeader(a.recordRoute(a.internalURI(a.tokens.Make(caller))))
	return func(res *sip.Response) { a.hideRoutes(res, caller) }
}

// userTrust is the trust header for what a remote user sends inside.
func (a *accessEdge) userTrust() string {
	return "ms-source-type=" + access.SourceInternetUser + ";ms-ep-fqdn=" + a.hostname
}

// sane runs the checks every request from outside passes first (RFC 3261
// §16.3, §8.2): it returns 0, or the status, reason phrase and log reason.
func (a *accessEdge) sane(req *sip.Request) (int, string, string) {
	if s := strings.ToLower(req.Recipient.Scheme); s != "sip" && s != "sips" {
		return 416, "Unsupported URI Scheme", "uri_scheme"
	}
	for _, h := range []string{"To", "From", "Call-ID", "CSeq", "Via"} {
		if req.GetHeader(h) == nil {
			return 400, "Bad Request (missing " + h + ")", "missing_header"
		}
	}
	if cseq := req.CSeq(); cseq == nil || cseq.MethodName != req.Method {
		return 400, "Bad Request (CSeq method does not match)", "cseq_method"
	}
	if req.From().Address.Host == "" || req.To().Address.Host == "" {
		return 400, "Bad Request (From and To must be SIP URIs)", "bad_address"
	}
	if max := a.cfg.Limits.MaxMessageBytes; max > 0 && len(req.Body()) > max {
		return 413, "Request Entity Too Large", "too_large"
	}
	return 0, "", ""
}

// inDialogFromOutside forwards a request that follows the route we gave a
// remote user or partner: our external URI is replaced by the internal
// route set it stands for; trust is the trust header to set.
func (a *accessEdge) inDialogFromOutside(req *sip.Request, route *sip.RouteHeader, tx sip.ServerTransaction, trust string) {
	routes, ok := a.tokens.OpenRoutes(route.Address.User)
	if !ok {
		a.refuse(tx, req, 403, "Forbidden (Route is not this edge's)", "foreign_route")
		return
	}
	out := req.Clone()
	out.RemoveHeader("Route")
	var hdrs []sip.Header
	for _, r := range routes {
		var u sip.Uri
		if err := sip.ParseUri(r, &u); err != nil {
			a.refuse(tx, req, 400, "Bad Request", "bad_route")
			return
		}
		hdrs = append(hdrs, &sip.RouteHeader{Address: u})
	}
	out.PrependHeader(hdrs...)
	if !sipnode.DecMaxForwards(out) {
		a.refuse(tx, req, 483, "Too Many Hops", "max_forwards")
		return
	}
	out.AppendHeader(sip.NewHeader(access.TrustHeader, trust))
	out.SetDestination(a.coreAddr) // the only inside hop an edge talks to
	out.SetTransport("TLS")
	a.relay(req, out, tx, nil)
}

func (a *accessEdge) recordRoute(uri string) *sip.RecordRouteHeader {
	var u sip.Uri
	_ = sip.ParseUri(uri, &u)
	return &sip.RecordRouteHeader{Address: u}
}

// externalURI is a loose-routing URI of our external listener: what remote
// users see of a dialog's route set.
func (a *accessEdge) externalURI(user string) string {
	return "sip:" + user + "@" + a.external + ";transport=tls;lr"
}

// namesUs reports whether a URI names our external listener (by address,
// or by the public name in its certificate).
func (a *accessEdge) namesUs(u sip.Uri) bool {
	port := u.Port
	if port == 0 {
		port = 5061
	}
	if net.JoinHostPort(u.Host, strconv.Itoa(port)) == a.external {
		return true
	}
	return a.cfg.PublicName != "" && strings.EqualFold(u.Host, a.cfg.PublicName) && (u.Port == 0 || strings.HasSuffix(a.external, ":"+strconv.Itoa(u.Port)))
}

// ours reports whether a route URI is the internal one we made for flow
// (the edge can appear more than once in a route set: both parties remote).
func (a *accessEdge) ours(u sip.Uri, flow string) bool {
	f, ok := a.tokens.Open(u.User)
	return ok && f == flow && net.JoinHostPort(u.Host, strconv.Itoa(u.Port)) == a.internal
}

// hideRoutes rewrites the Record-Route of a response going out to a remote
// caller at flow: the hops above our entry for that caller become one URI
// of our external listener that carries them, in the order the caller's
// requests will follow them (§12.1.2: a UAC reverses the Record-Route).
// Entries below ours came from outside with the request (a partner's edge,
// a client's own proxy) and stay, after ours: the caller's requests reach
// those hops first.
func (a *accessEdge) hideRoutes(res *sip.Response, flow string) {
	above, below, found := splitRecordRoutes(res, func(u sip.Uri) bool { return a.ours(u, flow) })
	if !found && len(above) == 0 {
		return // no Record-Route
	}
	inside := make([]string, len(above))
	for i, rr := range above {
		inside[len(above)-1-i] = rr.Address.String()
	}
	sipnode.RemoveAll(res, "Record-Route")
	res.AppendHeader(a.recordRoute(a.externalURI(a.tokens.MakeRoutes(inside))))
	for _, h := range below {
		res.AppendHeader(h)
	}
}

// splitRecordRoutes splits res's Record-Route at the entry ours picks: the
// entries above it and those below it (copies), and whether it was there
// (if not, every entry is above).
func splitRecordRoutes(res *sip.Response, ours func(sip.Uri) bool) (above, below []*sip.RecordRouteHeader, found bool) {
	for _, h := range res.GetHeaders("Record-Route") {
		rr, ok := h.(*sip.RecordRouteHeader)
		switch {
		case !ok:
		case found:
			below = append(below, rr.Clone())
		case ours(rr.Address):
			found = true
		default:
			above = append(above, rr.Clone())
		}
	}
	return above, below, found
}

// internalURI is a loose-routing URI of our internal listener with user.
func (a *accessEdge) internalURI(user string) string {
	return "sip:" + user + "@" + a.internal + ";transport=tls;lr"
}

// fromCore sends a request of the core's out: to a remote user or a
// partner over the flow our Route names (in dialog, or a remote user's
// registration), or to a partner's edge (a home user's request for a
// partner's domain, admitted by the federation link). Internal Vias are
// hidden.
func (a *accessEdge) fromCore(m *msg) {
	req, tx := m.req, m.tx
	route := req.Route()
	if route == nil {
		if m.partner != nil {
			a.toPartner(m)
			return
		}
		a.refuse(tx, req, 403, "Forbidden (no route through this edge)", "no_route")
		return
	}
	node := a.node
	flow, ok := a.tokens.Open(route.Address.User)
	if !ok {
		// A dialog with a partner that we called: its edge, over the
		// partner's user agent.
		domain, addr, pok := a.tokens.OpenPartner(route.Address.User)
		if !pok {
			// Signed by an earlier run of this edge (its keys live as long
			// as the process): the connection it names is gone. 430 makes
			// the core drop a binding whose Path it is.
			a.refuse(tx, req, 430, "Flow Failed", "stale_route")
			return
		}
		var err error
		if node, err = a.partners.agent(domain); err != nil {
			a.refuse(tx, req, 503, "Service Unavailable", "partner_unreachable", sip.NewHeader("Retry-After", "30"))
			return
		}
		flow = addr
	} else if !a.node.FlowOpen(flow) {
		// The remote user's connection is gone. The edge never dials out
		// to a user (RFC 5626 §5.3: the flow failed; the client registers
		// again over a new one). If they have, the request goes over that.
		renewed, ok := "", false
		if to := req.To(); to != nil {
			renewed, ok = a.contacts.lookup(to.Address, req.Recipient, time.Now())
		}
		if !ok || !a.node.FlowOpen(renewed) {
			a.refuse(tx, req, 430, "Flow Failed", "flow_failed")
			return
		}
		flow = renewed
	}
	out := req.Clone()
	out.RemoveHeader("Route") // ours, the top one
	if !sipnode.DecMaxForwards(out) {
		a.refuse(tx, req, 483, "Too Many Hops", "max_forwards")
		return
	}
	sipnode.RemoveAll(out, "Via") // topology hiding: only our Via leaves
	sipnode.RemoveAll(out, access.TrustHeader)
	var fix func(*sip.Response)
	if req.IsInvite() || req.Method == sip.SUBSCRIBE {
		fix = a.hideInternalRoutes(out, route.Address.User)
	}
	out.SetDestination(sipnode.FlowAddr(flow))
	out.SetTransport("TLS")
	if a.forward(node, req, out, tx, true, fix) == errNextHop {
		a.refuse(tx, req, 503, "Service Unavailable", "next_hop_unreachable", sip.NewHeader("Retry-After", "10"))
	}
}

// hideInternalRoutes replaces the Record-Routes of a dialog-creating
// request going out with one route of ours standing for the internal ones
// (in the order a UAS follows them: §12.1.1), and returns the fix that
// restores them, with ours (carrying the flow token tok) on the responses
// going back inside. Entries above ours in a response were added outside
// (a partner's edge) and stay, before ours: the requests of the dialog
// from inside reach them after us.
func (a *accessEdge) hideInternalRoutes(out *sip.Request, tok string) func(*sip.Response) {
	var inside []string
	var kept []sip.Header
	for _, h := range out.GetHeaders("Record-Route") {
		if rr, ok := h.(*sip.RecordRouteHeader); ok {
			inside = append(inside, rr.Address.String())
			kept = append(kept, sip.HeaderClone(rr))
		}
	}
	if len(inside) == 0 {
		return nil
	}
	sipnode.RemoveAll(out, "Record-Route")
	routes := a.tokens.MakeRoutes(inside)
	out.PrependHeader(a.recordRoute(a.externalURI(routes)))
	internal := a.recordRoute(a.internalURI(tok))
	return func(res *sip.Response) {
		above, _, found := splitRecordRoutes(res, func(u sip.Uri) bool { return u.User == routes && a.namesUs(u) })
		if !found {
			above = nil // ours is missing: keep nothing from outside
		}
		sipnode.RemoveAll(res, "Record-Route")
		for _, h := range above {
			res.AppendHeader(h)
		}
		res.AppendHeader(internal)
		for _, h := range kept {
			res.AppendHeader(h)
		}
	}
}

// relay forwards a request from outside to the core (forward), answering
// 503 when the core cannot be reached.
func (a *accessEdge) relay(req, out *sip.Request, tx sip.ServerTransaction, fix func(*sip.Response)) {
	if a.forward(a.node, req, out, tx, false, fix) == errNextHop {
		a.refuse(tx, req, 503, "Service Unavailable", "next_hop_unreachable", sip.NewHeader("Retry-After", "10"))
	}
}

// forward runs a client transaction for out on node's user agent and
// relays its responses to the server transaction of req. When hide is set,
// the responses are rebuilt on req's own Vias (the ones removed from out);
// fix, if set, rewrites each response relayed. A CANCEL of req is passed on
// (§16.10). It returns errNextHop, having answered nothing, when out could
// not be sent.
func (a *accessEdge) forward(node *sipnode.Node, req, out *sip.Request, tx sip.ServerTransaction, hide bool, fix func(*sip.Response)) error {
	timeout := timerF
	if req.IsInvite() {
		timeout = timerC
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// The edge dials the core and partners' edges itself (sipnode.Connect:
	// raw system calls); a partner's user agent sends to nothing else. It
	// never dials a remote user.
	if node != a.node || out.Destination() == a.coreAddr {
		if err := node.Connect(ctx, out.Destination()); err != nil {
			a.log.Info("forwarding failed", "method", req.Method, "destination", out.Destination(), "error", err)
			return errNextHop
		}
	}
	if req.IsAck() {
		if err := node.Client.WriteRequest(out, sipgo.ClientRequestAddVia); err != nil {
			a.log.Info("forwarding ACK failed", "error", err)
		}
		return nil
	}
	ctx2, err := node.Client.TransactionRequest(ctx, out, sipgo.ClientRequestAddVia)
	if err != nil {
		a.log.Info("forwarding failed", "method", req.Method, "destination", out.Destination(), "error", err)
		return errNextHop
	}
	defer ctx2.Terminate()
	ackWanted := false // an INVITE from inside answered with a non-2xx final: see awaitAck
	defer func() {
		if ackWanted {
			awaitAck(tx)
		}
	}()
	upstream := func(res *sip.Response) *sip.Response {
		var up *sip.Response
		if hide {
			up = restore(req, res)
		} else {
			up = sipnode.OwnResponse(res) // the client transaction is done with it
			up.RemoveHeader("Via")
		}
		if fix != nil {
			fix(up)
		}
		return up
	}
	late := func(up *sip.Response) { a.respondLate(req, up) }
	var cr *sipnode.CancelGate    // a caller's CANCEL passed on (§9.1)
	var cancelled <-chan struct{} // closed once the caller cancels (nil: never)
	if req.IsInvite() {
		cr = sipnode.NewCancelGate(func() {
			cctx, cc := context.WithTimeout(context.Background(), timerF)
			defer cc()
			if _, err := node.Client.Do(cctx, sipnode.CancelRequest(out)); err != nil {
				a.log.Info("passing CANCEL on failed", "error", err)
			}
		})
		cancelled = cr.Wanted()
		onCancel := func(*sip.Request) {
			// A 2xx that crosses the CANCEL still goes to the caller,
			// after the 487 (sipnode/late.go), also once the next hop's
			// 487 has ended our client transaction.
			node.ExpectLateAnswer(out, func(res *sip.Response) { late(upstream(res)) })
			cr.Want()
		}
		if !tx.OnCancel(onCancel) {
			// The CANCEL came (or the transaction ended) while the INVITE
			// was being sent on: pass it on too, or the next hop rings on.
			onCancel(nil)
		}
	}
	for {
		select {
		case res := <-ctx2.Responses():
			if cr != nil && res.IsProvisional() {
				cr.Provisional()
			}
			if res.StatusCode == 100 {
				continue
			}
			up := upstream(res)
			switch {
			case cr != nil && res.IsSuccess():
				crossed := func(u *sip.Response) { // it crossed the caller's CANCEL
					if node.ClaimLate(out, res) {
						late(u)
					}
				}
				if err := sipnode.PassSuccess(tx, up, crossed); err != nil {
					a.log.Warn("relaying 2xx failed", "error", err)
				}
			default:
				select {
				case <-cancelled:
					// the server transaction already answered 487
				default:
					if err := tx.Respond(up); err != nil {
						a.log.Warn("relaying response failed", "status", res.StatusCode, "error", err)
					}
				}
			}
			if !res.IsProvisional() {
				ackWanted = hide && req.IsInvite() && (!res.IsSuccess() || closed(cancelled))
				return nil
			}
		case <-ctx2.Done():
			a.refuse(tx, req, 408, "Request Timeout", "no_answer")
			ackWanted = hide && req.IsInvite()
			return nil
		case <-ctx.Done():
			a.refuse(tx, req, 408, "Request Timeout", "no_answer")
			ackWanted = hide && req.IsInvite()
			return nil
		}
	}
}

// awaitAck keeps the server transaction of an INVITE from inside (the core
// calling a remote user or a partner) answered with a non-2xx final
// response (relayed, or sipgo's 487 to a CANCEL) until the core's ACK for
// that response has come, for at most ackWait: sipgo ends a transaction on
// a reliable transport as soon as its handler returns, and an ACK that
// came after would be taken for a new request and, carrying the INVITE's
// Route (§17.1.1.3), sent on in the dialog to the user. An INVITE from
// outside is not waited for (nothing outside can make the edge hold its
// transactions): a late ACK from outside goes to the core, which drops an
// ACK without a route. A transaction that took a 2xx ends by itself
// (Timer L).
func awaitAck(tx sip.ServerTransaction) {
	t := time.NewTimer(ackWait)
	defer t.Stop()
	select {
	case <-tx.Done():
	case <-t.C:
	}
}

const ackWait = 2 * time.Second

// closed says whether ch (nil: never) is closed.
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// respondLate sends res to the caller of req without req's transaction
// (sipnode.RespondLate), over the connection req came on: one of the edge's
// own user agent's, or of a partner's agent when a partner's edge sent req
// over a connection we dialled.
func (a *accessEdge) respondLate(req *sip.Request, res *sip.Response) {
	err := a.node.RespondLate(req, res)
	if err != nil && a.partners != nil {
		for _, n := range a.partners.nodes() {
			if n.RespondLate(req, res) == nil {
				return
			}
		}
	}
	if err != nil {
		a.log.Warn("passing a 2xx that crossed a CANCEL failed", "error", err)
	}
}

// restore builds the response to req from a response to our hidden copy:
// req's own Via, From, Call-ID and CSeq; the To (with its tag), body and
// other headers of res.
func restore(req *sip.Request, res *sip.Response) *sip.Response {
	up := sip.NewResponseFromRequest(req, res.StatusCode, res.Reason, res.Body())
	sipnode.RemoveAll(up, "Record-Route") // copied from req: res has the dialog's own
	if to := res.To(); to != nil {
		up.ReplaceHeader(sip.HeaderClone(to))
	}
	for _, h := range res.Headers() {
		if !restoredFromRequest(h.Name()) {
			up.AppendHeader(sip.HeaderClone(h))
		}
	}
	return up
}

// restoredFromRequest names the headers restore takes from the request (or
// has set already), in any letter case (sipgo gives compact forms their
// full names).
func restoredFromRequest(name string) bool {
	for _, n := range [...]string{"Via", "From", "To", "Call-ID", "CSeq", "Content-Length"} {
		if strings.EqualFold(name, n) {
			return true
		}
	}
	return false
}
