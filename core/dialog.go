package core

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"portcullis/access"
	"portcullis/internal/sipnode"
)

// recordRoutes are our Record-Routes for a dialog (its caller at d.Flow),
// topmost (the callee's side) first. Their token names the dialog: its
// Call-ID and parties (inDialog holds requests to them). A caller on the
// users' listener gets one, on that listener. A caller who came through an
// edge gets two (double record-routing, RFC 5658): the callee's side
// reaches us on the users' listener (an internal user has no certificate
// for the MTLS one), the caller's edge on the MTLS one. Both carry the
// same token; inDialog pops both.
func (p *proxy) recordRoutes(d sipnode.Dialog, viaEdge bool) []*sip.RecordRouteHeader {
	tok := p.tokens.MakeDialog(d)
	rr := func(addr string) *sip.RecordRouteHeader {
		ap := netip.MustParseAddrPort(addr)
		return &sip.RecordRouteHeader{Address: sip.Uri{Scheme: "sip", User: tok, Host: ap.Addr().String(), Port: int(ap.Port()),
			UriParams: sip.HeaderParams{{K: "transport", V: "tls"}, {K: "lr", V: ""}}}}
	}
	users := p.node.UserAddr()
	switch {
	case users == "":
		return []*sip.RecordRouteHeader{rr(p.node.Addr())}
	case viaEdge:
		return []*sip.RecordRouteHeader{rr(users), rr(p.node.Addr())}
	default:
		return []*sip.RecordRouteHeader{rr(users)}
	}
}

// branch is one fork of an INVITE.
type branch struct {
	out  *sip.Request
	tx   sip.ClientTransaction
	gate *sipnode.CancelGate // its CANCEL, sent once it has rung (§9.1)
}

// invite forwards an INVITE to every binding of the target (§16.6) and
// relays responses (§16.7): provisionals upstream, the first 2xx upstream
// with every other branch cancelled, or the best final response once all
// branches have ended. A CANCEL from the caller cancels every branch.
func (p *proxy) invite(peer *access.PeerIdentity, req *sip.Request, tx sip.ServerTransaction) {
	viaEdge := peer.Name != ""
	if req.To().Params.Has("tag") {
		p.inDialog(peer, req, tx) // a re-INVITE
		return
	}
	if !p.preloaded(req, tx) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute) // Timer C
	defer cancel()
	target, bindings, ok := p.admit(ctx, peer, req, tx)
	if !ok {
		return
	}
	from := req.From().Address
	caller, _, _, _ := ParseAOR("sip:" + from.User + "@" + from.Host) // admit checked it
	rrs := p.recordRoutes(sipnode.Dialog{Flow: p.node.Flow(req.Source()), CallID: req.CallID().Value(), Caller: caller, Callee: target}, viaEdge)
	var mu sync.Mutex
	var branches []*branch
	cancelled := false
	over := false // answered or cancelled: branches created from now on are cancelled at birth
	cancelAll := func(except *branch) {
		mu.Lock()
		defer mu.Unlock()
		over = true
		for _, b := range branches {
			if b != except {
				b.gate.Want()
			}
		}
	}
	// A 2xx crossing the caller's CANCEL still goes to the caller, after
	// the 487 (sipnode/late.go): from a branch still open (follow), or
	// matching no transaction any more (the next hop's 487 ended it).
	sendLate := func(up *sip.Response) {
		if err := p.node.RespondLate(req, up); err != nil {
			p.log.Warn("passing a 2xx that crossed a CANCEL failed", "error", err)
		}
	}
	late := func(res *sip.Response) { sendLate(p.upstream(res)) }
	if !tx.OnCancel(func(*sip.Request) {
		mu.Lock()
		cancelled = true
		for _, b := range branches {
			p.node.ExpectLateAnswer(b.out, late)
		}
		mu.Unlock()
		p.log.Info("call cancelled by the caller", "to", target)
		cancelAll(nil)
	}) {
		// Cancelled (answered 487) or ended before any branch: none is made.
		p.log.Info("call cancelled by the caller before it was forked", "to", target)
		return
	}
	results := make(chan *sip.Response, len(bindings))
	for _, b := range bindings {
		out, err := p.branchTo(ctx, req, b)
		if err != nil {
			p.log.Info("branch failed", "target", b.Contact, "error", err)
			results <- nil
			continue
		}
		for i := len(rrs) - 1; i >= 0; i-- {
			out.PrependHeader(rrs[i].Clone())
		}
		// ctx only bounds dialling: the transaction lives by its own timers.
		ctxTx, err := p.node.Client.TransactionRequest(ctx, out, sipgo.ClientRequestAddVia)
		if err != nil {
			p.log.Info("branch failed", "target", out.Recipient.String(), "error", err)
			results <- nil
			continue
		}
		br := &branch{out: out, tx: ctxTx}
		br.gate = sipnode.NewCancelGate(func() { p.cancelBranch(br) })
		mu.Lock()
		if over {
			br.gate.Want() // sent on its first provisional
		}
		if cancelled {
			p.node.ExpectLateAnswer(out, late)
		}
		branches = append(branches, br)
		mu.Unlock()
		go func() {
			sipnode.GrowStack()
			results <- p.flowCheck(b, p.follow(br, tx, sendLate, cancelAll))
		}()
	}
	success, best := collect(results, len(bindings))
	if success != nil {
		return // forwarded by follow
	}
	mu.Lock()
	wasCancelled := cancelled
	mu.Unlock()
	if wasCancelled {
		return // the server transaction already answered 487
	}
	if best == nil {
		p.respond(tx, req, 408, "Request Timeout")
		return
	}
	if err := tx.Respond(p.upstream(best)); err != nil {
		p.log.Warn("forwarding final response failed", "status", best.StatusCode, "error", err)
	}
}

// follow relays one branch's responses until its final one, which it
// returns. A 2xx is sent upstream at once (after the caller's CANCEL, it
// crossed it: with late) and the other branches cancelled.
func (p *proxy) follow(b *branch, up sip.ServerTransaction, late func(*sip.Response), cancelAll func(except *branch)) *sip.Response {
	defer b.tx.Terminate()
	for {
		select {
		case res := <-b.tx.Responses():
			if res.IsProvisional() {
				wanted := b.gate.Provisional()
				if res.StatusCode > 100 && !wanted {
					_ = up.Respond(p.upstream(res))
				}
				continue
			}
			if res.IsSuccess() {
				crossed := func(u *sip.Response) { // it crossed the caller's CANCEL
					if p.node.ClaimLate(b.out, res) {
						late(u)
					}
				}
				if err := sipnode.PassSuccess(up, p.upstream(res), crossed); err != nil {
					p.log.Warn("forwarding 2xx failed", "error", err)
				}
				cancelAll(b)
			}
			return res
		case <-b.tx.Done():
			return nil
		}
	}
}

// cancelBranch sends CANCEL for a forked INVITE (§9.1).
func (p *proxy) cancelBranch(b *branch) {
	ctx, cancel := context.WithTimeout(context.Background(), timerF)
	defer cancel()
	if _, err := p.node.Client.Do(ctx, sipnode.CancelRequest(b.out)); err != nil {
		p.log.Info("CANCEL of a branch failed", "target", b.out.Recipient.String(), "error", err)
	}
}

// inDialog forwards a request inside a dialog we record-routed (§16.4:
// loose routing). Our Route carries the caller's flow; a registered
// contact (the callee's) is reached over the flow it registered from.
func (p *proxy) inDialog(_ *access.PeerIdentity, req *sip.Request, tx sip.ServerTransaction) {
	if req.Method == sip.ACK {
		tx = nil // an ACK is never answered (§17.1.1.3)
	}
	route := req.Route()
	if route == nil || req.Method == sip.CANCEL {
		// A CANCEL matching an INVITE we forward is taken by its
		// transaction before any handler; this one matches nothing (§9.2).
		if tx != nil {
			p.refuse(tx, req, 481, "Call/Transaction Does Not Exist", "no_route")
		}
		return
	}
	d, ours := p.tokens.OpenDialog(route.Address.User)
	switch {
	case !ours:
		if tx != nil {
			p.refuse(tx, req, 403, "Forbidden (Route is not this proxy's)", "foreign_route")
		}
		return
	case !req.To().Params.Has("tag") || req.CallID().Value() != d.CallID:
		// The route was recorded for another dialog, or this is no
		// dialog's request: whoever holds one of our Routes must not
		// reach anyone else with it, unauthenticated.
		if tx != nil {
			p.refuse(tx, req, 403, "Forbidden (Route is for another dialog)", "route_other_dialog")
		}
		return
	}
	callerFlow := d.Flow
	out := req.Clone()
	out.RemoveHeader("Route") // pop our Route (the top one)
	for next := out.Route(); next != nil; next = out.Route() {
		if _, also := p.tokens.OpenDialog(next.Address.User); !also {
			break
		}
		out.RemoveHeader("Route") // our second one (double record-routing)
	}
	if !sipnode.DecMaxForwards(out) {
		if tx != nil {
			p.refuse(tx, req, 483, "Too Many Hops", "max_forwards")
		}
		return
	}
	dest := callerFlow
	if next := out.Route(); next != nil {
		// §16.12: another hop recorded the dialog (an edge, toward a remote
		// user): it comes next.
		dest = net.JoinHostPort(next.Address.Host, strconv.Itoa(next.Address.Port))
	} else {
		// To a registered contact (the callee's, or an internal caller's):
		// over its flow now. Which side sent the request is not told by its
		// source: a caller who came through an edge comes back over a new
		// connection once the edge's link has broken and been made again.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		flow, err := p.flowOf(ctx, req.Recipient.String(), d)
		cancel()
		switch {
		case err == nil:
			dest = flow
		case p.node.Flow(req.Source()) == callerFlow:
			// From the caller, to a contact no longer registered.
			if tx != nil {
				p.refuse(tx, req, 404, "Not Found (no flow to this contact)", "no_flow")
			}
			return
		} // else toward the caller, over its flow
		if !p.node.FlowOpen(dest) {
			// The user's connection is gone: the core never dials a user.
			if tx != nil {
				p.refuse(tx, req, 480, "Temporarily Unavailable (flow failed)", "flow_failed") // not 430: that is between proxies (RFC 5626 §11.5)
			}
			return
		}
	}
	out.SetDestination(sipnode.FlowAddr(dest))
	if req.Method == sip.ACK {
		if err := p.node.Client.WriteRequest(out, sipgo.ClientRequestAddVia); err != nil {
			p.log.Info("forwarding ACK failed", "error", err)
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), timerF)
	defer cancel()
	res := p.send(ctx, out)
	if res == nil {
		p.respond(tx, req, 408, "Request Timeout")
		return
	}
	if err := tx.Respond(p.upstream(res)); err != nil {
		p.log.Warn("forwarding in-dialog response failed", "error", err)
	}
}

// flowOf finds the flow a registered contact of one of the dialog's
// parties came from. It looks among the parties' own bindings: another
// user may have registered the same contact URI.
func (p *proxy) flowOf(ctx context.Context, contact string, d sipnode.Dialog) (string, error) {
	var uri sip.Uri
	if err := sip.ParseUri(contact, &uri); err != nil {
		return "", err
	}
	want, now := uri.String(), time.Now()
	for _, aor := range [...]string{d.Callee, d.Caller} {
		bs, err := p.st.Bindings(ctx, aor, now)
		if err != nil {
			return "", err
		}
		for _, b := range bs {
			if b.Contact != want {
				continue
			}
			_, addr, ok := strings.Cut(b.Source, ":")
			if !ok {
				return "", errors.New("binding without a flow")
			}
			return addr, nil
		}
	}
	return "", errors.New("not a registered contact of either party to the dialog")
}
