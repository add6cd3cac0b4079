package core

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"portcullis/access"
	"portcullis/core/store"
	"portcullis/internal/sipnode"
)

// proxy routes requests between users of the home domains (RFC 3261 §16):
// out-of-dialog requests to every binding of the target (route, invite in
// dialog.go), in-dialog requests along the Route we recorded (inDialog).
type proxy struct {
	*authenticator
	node     *sipnode.Node
	log      *slog.Logger
	tokens   *sipnode.FlowTokens
	hostname string // ours, as in our certificate
	// fedEdge is the edge that federates ("" when none), read per request.
	fedEdge func() string
}

// timerF bounds a non-INVITE client transaction (RFC 3261 §17.1.2.2).
const timerF = 32 * time.Second

func (p *proxy) route(peer *access.PeerIdentity, req *sip.Request, tx sip.ServerTransaction) {
	if req.Route() != nil && req.To().Params.Has("tag") {
		p.inDialog(peer, req, tx)
		return
	}
	if !p.preloaded(req, tx) {
		return
	}
	if req.Method == sip.OPTIONS && req.Recipient.User == "" {
		p.respond(tx, req, 200, "OK", sip.NewHeader("Allow", "OPTIONS, REGISTER, MESSAGE, INVITE, ACK, BYE, CANCEL, UPDATE, INFO, PRACK")) // to this server: keepalive
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), timerF)
	defer cancel()
	target, bindings, ok := p.admit(ctx, peer, req, tx)
	if !ok {
		return
	}
	res := p.fork(ctx, req, bindings)
	if err := tx.Respond(res); err != nil {
		p.log.Warn("forwarding response failed", "status", res.StatusCode, "error", err)
	}
	p.log.Debug("routed", "method", req.Method, "to", target, "branches", len(bindings), "status", res.StatusCode)
}

// preloaded deals with the Routes of a request outside a dialog (no To
// tag), before it is authenticated like any other (§16.4): those naming
// this proxy (a client's outbound proxy, or a Record-Route token of ours)
// are removed; one naming anything else is refused 403. A Route of ours
// never takes a request past authentication: routes recorded for a
// dialog serve requests inside it (inDialog).
func (p *proxy) preloaded(req *sip.Request, tx sip.ServerTransaction) bool {
	for r := req.Route(); r != nil; r = req.Route() {
		if !p.namesUs(r.Address) {
			p.refuse(tx, req, 403, "Forbidden (Route is not this proxy's)", "foreign_route")
			return false
		}
		req.RemoveHeader("Route")
	}
	return true
}

// namesUs reports whether a URI names this proxy: one of our listeners'
// addresses, or our host name.
func (p *proxy) namesUs(u sip.Uri) bool {
	if strings.EqualFold(u.Host, p.hostname) {
		return true
	}
	port := u.Port
	if port == 0 {
		port = 5061
	}
	hp := net.JoinHostPort(u.Host, strconv.Itoa(port))
	return hp == p.node.Addr() || hp == p.node.UserAddr()
}

// admit runs the checks every out-of-dialog request passes (§16.3) and
// returns the target AOR and its bindings, or answers the request. A
// request for another domain from a home user goes to the federating edge
// (one branch); one from a federated user (the edge's trust header says so)
// is not challenged: its domain vouched for it, and the edge checked the
// partner's certificate against that domain.
func (p *proxy) admit(ctx context.Context, peer *access.PeerIdentity, req *sip.Request, tx sip.ServerTransaction) (string, []store.Binding, bool) {
	// §16.3 step 3: Max-Forwards.
	if mf := req.MaxForwards(); mf != nil && mf.Val() == 0 {
		p.refuse(tx, req, 483, "Too Many Hops", "max_forwards")
		return "", nil, false
	}
	domain := strings.ToLower(req.Recipient.Host)
	_, home := p.digest.Realms()[domain]
	from := req.From()
	fromAOR, _, fromDomain, err := ParseAOR("sip:" + from.Address.User + "@" + from.Address.Host)
	_, fromHome := p.digest.Realms()[fromDomain]
	if partner, federated := p.federated(peer, req); federated {
		switch {
		case err != nil || fromHome || fromDomain != partner:
			p.refuse(tx, req, 403, "Forbidden (sender is not of the partner's domain)", "federated_spoof")
			return "", nil, false
		case !home:
			p.refuse(tx, req, 403, "Forbidden (not a home domain)", "foreign_domain")
			return "", nil, false
		}
		return p.targetBindings(ctx, req, tx, domain)
	}
	if !home && p.fedEdge() == "" {
		p.refuse(tx, req, 403, "Forbidden (not a home domain)", "foreign_domain")
		return "", nil, false
	}
	// The sender is a user of a home domain: authenticate (§22.3).
	if err != nil || !fromHome {
		p.refuse(tx, req, 403, "Forbidden (sender is not a user of a home domain)", "foreign_sender")
		return "", nil, false
	}
	user, ok := p.authenticate(ctx, tx, req, fromDomain, true)
	if !ok {
		return "", nil, false
	}
	if user.AOR != fromAOR {
		p.refuse(tx, req, 403, "Forbidden (From is not the authenticated user)", "from_mismatch")
		return "", nil, false
	}
	if !home {
		// Federation: one branch, to the edge's internal listener; the edge
		// applies the federation policy and finds the partner.
		target := "sip:" + req.Recipient.User + "@" + domain
		return target, []store.Binding{{AOR: target, Contact: req.Recipient.String(), Source: "TLS:" + p.fedEdge()}}, true
	}
	return p.targetBindings(ctx, req, tx, domain)
}

// federated reports whether req came through a trusted edge from a
// federation partner, and the partner's domain.
func (p *proxy) federated(peer *access.PeerIdentity, req *sip.Request) (string, bool) {
	if peer == nil || peer.Name == "" {
		return "", false // users' listener: the header was stripped anyway
	}
	h := req.GetHeader(access.TrustHeader)
	if h == nil {
		return "", false
	}
	return access.Federated(h.Value())
}

// targetBindings looks up the home user a request is for and their
// bindings: 404 for an unknown or disabled user, 480 with none.
func (p *proxy) targetBindings(ctx context.Context, req *sip.Request, tx sip.ServerTransaction, domain string) (string, []store.Binding, bool) {
	// §16.5: the target set is every binding of the request-URI's AOR.
	target, _, _, err := ParseAOR("sip:" + req.Recipient.User + "@" + domain)
	if err != nil {
		p.refuse(tx, req, 404, "Not Found", "bad_target")
		return "", nil, false
	}
	if u, err := p.st.UserByAOR(ctx, target); err != nil || u.Disabled {
		if err != nil && !errors.Is(err, store.ErrNoUser) {
			p.log.Error("store error", "error", err)
			p.respond(tx, req, 500, "Server Internal Error")
			return "", nil, false
		}
		p.refuse(tx, req, 404, "Not Found", "unknown_target")
		return "", nil, false
	}
	bindings, err := p.st.Bindings(ctx, target, time.Now())
	if err != nil {
		p.log.Error("store error", "error", err)
		p.respond(tx, req, 500, "Server Internal Error")
		return "", nil, false
	}
	bindings = p.liveBindings(ctx, bindings)
	if len(bindings) == 0 {
		p.refuse(tx, req, 480, "Temporarily Unavailable", "no_binding")
		return "", nil, false
	}
	return target, bindings, true
}

// liveBindings drops the bindings of users registered here directly whose
// connection is gone (RFC 5626 §5.3: the flow failed; the client registers
// again over a new one): the core never dials a user. Bindings through an
// edge (a Path) are the edge's to judge (it answers 430).
func (p *proxy) liveBindings(ctx context.Context, bindings []store.Binding) []store.Binding {
	var live []store.Binding // made only once one is dropped
	for i, b := range bindings {
		if _, addr, ok := strings.Cut(b.Source, ":"); ok && b.Path == "" && !p.node.FlowOpen(addr) {
			if live == nil {
				live = append(make([]store.Binding, 0, len(bindings)), bindings[:i]...)
			}
			p.dropBinding(ctx, b)
			continue
		}
		if live != nil {
			live = append(live, b)
		}
	}
	if live == nil {
		return bindings
	}
	return live
}

// fork sends req to every binding at once (§16.6) and returns the response
// to forward (§16.7): the first 2xx, else the best final response.
func (p *proxy) fork(ctx context.Context, req *sip.Request, bindings []store.Binding) *sip.Response {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan *sip.Response, len(bindings))
	for _, b := range bindings {
		out, err := p.branchTo(ctx, req, b)
		if err != nil {
			p.log.Warn("branch not sent", "aor", b.AOR, "contact", b.Contact, "error", err)
			results <- nil
			continue
		}
		branch := func() { results <- p.flowCheck(b, p.send(ctx, out)) }
		if len(bindings) == 1 { // the usual case: no goroutine to start and wait for
			branch()
			continue
		}
		go func() {
			sipnode.GrowStack()
			branch()
		}()
	}
	success, best := collect(results, len(bindings))
	if success != nil {
		return p.upstream(success)
	}
	if best == nil {
		return sip.NewResponseFromRequest(req, 408, "Request Timeout", nil)
	}
	return p.upstream(best)
}

// collect reads n branch results (nil: a branch without a final response)
// and returns the first 2xx (at once, §16.7 step 5) or else the best final
// response (step 6).
func collect(results <-chan *sip.Response, n int) (success, best *sip.Response) {
	for range n {
		res := <-results
		if res == nil {
			continue
		}
		if res.IsSuccess() {
			return res, nil
		}
		if best == nil || better(res, best) {
			best = res
		}
	}
	return nil, best
}

// branchTo is branchRequest, with the connection to the edge that a remote
// user's binding leads through made first: the core dials its connections
// to edges itself (sipnode.Connect).
func (p *proxy) branchTo(ctx context.Context, req *sip.Request, b store.Binding) (*sip.Request, error) {
	out, err := branchRequest(req, b)
	if err == nil && b.Path != "" {
		err = p.node.Connect(ctx, out.Destination())
	}
	return out, err
}

// branchRequest is req retargeted to a binding: the Request-URI becomes the
// registered contact and the request goes over the flow the user registered
// from (their own connection: RFC 5626 §5.3), with Max-Forwards decremented
// (§16.6 step 3) and our credentials removed.
func branchRequest(req *sip.Request, b store.Binding) (*sip.Request, error) {
	var contact sip.Uri
	if err := sip.ParseUri(b.Contact, &contact); err != nil {
		return nil, err
	}
	_, addr, ok := strings.Cut(b.Source, ":")
	if !ok {
		return nil, errors.New("binding without a source flow")
	}
	out := req.Clone()
	out.Recipient = contact
	out.RemoveHeader("Proxy-Authorization")
	if b.Path != "" {
		// Registered through an edge: route through it (RFC 3327 §5.3).
		var routes []sip.Header
		for _, hop := range strings.Split(b.Path, ",") {
			h := &sip.RouteHeader{}
			var params sip.HeaderParams
			if _, err := sip.ParseAddressValue(strings.TrimSpace(hop), &h.Address, &params); err != nil {
				return nil, err
			}
			routes = append(routes, h)
		}
		out.PrependHeader(routes...)
		top := routes[0].(*sip.RouteHeader).Address
		out.SetDestination(net.JoinHostPort(top.Host, strconv.Itoa(top.Port)))
	} else {
		out.SetDestination(sipnode.FlowAddr(addr))
	}
	sipnode.DecMaxForwards(out)
	return out, nil
}

// flowCheck drops a binding whose flow failed (RFC 5626 §5.3: an edge
// answers 430 when the user's connection is gone) and passes res on.
func (p *proxy) flowCheck(b store.Binding, res *sip.Response) *sip.Response {
	if res != nil && res.StatusCode == 430 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		p.dropBinding(ctx, b)
	}
	return res
}

// dropBinding removes a binding whose flow failed.
func (p *proxy) dropBinding(ctx context.Context, b store.Binding) {
	if err := p.st.DeleteBinding(ctx, b.AOR, b.Contact); err != nil {
		p.log.Warn("dropping a failed flow's binding", "aor", b.AOR, "error", err)
		return
	}
	p.log.Info("binding dropped: its flow failed", "aor", b.AOR, "contact", b.Contact)
}

// send runs one client transaction and returns its final response, or nil
// (no answer before ctx ends: the caller stops waiting on a first 2xx).
func (p *proxy) send(ctx context.Context, out *sip.Request) *sip.Response {
	res, err := p.node.Client.Do(ctx, out, sipgo.ClientRequestAddVia)
	if err != nil {
		if ctx.Err() == nil {
			p.log.Info("branch failed", "target", out.Recipient.String(), "error", err)
		}
		return nil
	}
	return res
}

// upstream makes a downstream response ready to forward: our Via removed
// (§16.7 step 3), leaving the request's own. It changes res in place (no
// copy per forwarded response): a client transaction is done with a
// response once it has passed it up, and nothing here reads its Via after;
// but a 2xx to an INVITE is copied first (sipnode.OwnResponse).
func (p *proxy) upstream(res *sip.Response) *sip.Response {
	if res.StatusCode == 430 {
		// RFC 5626 §11.5: 430 is between proxies, and an endpoint takes it
		// for 400. To the user, the other party cannot be reached now. (A
		// copy: the transport's watcher may be reading the original.)
		res = res.Clone()
		res.StatusCode, res.Reason = 480, "Temporarily Unavailable (flow failed)"
	} else {
		res = sipnode.OwnResponse(res)
	}
	res.RemoveHeader("Via")
	return res
}

// better says whether a is a better final response than b (§16.7 step 6):
// a 6xx, else the lowest class.
func better(a, b *sip.Response) bool {
	ac, bc := a.StatusCode/100, b.StatusCode/100
	if ac == 6 || bc == 6 {
		return ac == 6 && bc != 6
	}
	return ac < bc
}
