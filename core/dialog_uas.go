package core

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"portcullis/internal/sipnode"
)

// uasDialog is the state a UAS (the Focus) keeps to send requests in a
// dialog it accepted (RFC 3261 §12.1.1): the route set from the request's
// Record-Route, the remote target from its Contact, and, when there is no
// route set, the flow (connection) the request came over: a user's client
// cannot be reached at its Contact.
type uasDialog struct {
	callID    string
	local     sip.Uri // our URI (the request's To), with localTag
	localTag  string
	remote    sip.Uri // the peer's URI (the request's From), with remoteTag
	remoteTag string
	target    sip.Uri
	routes    []sip.Uri
	flow      string
	cseq      atomic.Uint32
}

// newUASDialog is the dialog req opens, its peer at flow (sipnode.Node.Flow
// of the request's source). The route set is taken from req's Record-Route
// only when req came through a proxy we trust (fromPeer: an MTLS peer, an
// edge): a user's client reaches the core directly, so a Record-Route it
// sends is its own invention, and taken as the route set it would have the
// core dial any address it named. A user is reached over its connection.
func newUASDialog(req *sip.Request, localTag, flow string, fromPeer bool) *uasDialog {
	d := &uasDialog{callID: req.CallID().Value(), local: req.To().Address, localTag: localTag, remote: req.From().Address, flow: flow}
	d.remoteTag, _ = req.From().Params.Get("tag")
	d.target = req.From().Address
	if c := req.Contact(); c != nil {
		d.target = c.Address
	}
	for _, h := range req.GetHeaders("Record-Route") {
		if rr, ok := h.(*sip.RecordRouteHeader); ok && fromPeer {
			d.routes = append(d.routes, rr.Address)
		}
	}
	d.cseq.Store(1000)
	return d
}

// request builds a request in the dialog, addressed along the route set
// (loose routing) or over the flow.
func (d *uasDialog) request(method sip.RequestMethod) *sip.Request {
	r := sip.NewRequest(method, d.target)
	r.AppendHeader(&sip.FromHeader{Address: d.local, Params: sip.HeaderParams{{K: "tag", V: d.localTag}}})
	r.AppendHeader(&sip.ToHeader{Address: d.remote, Params: sip.HeaderParams{{K: "tag", V: d.remoteTag}}})
	cid := sip.CallIDHeader(d.callID)
	r.AppendHeader(&cid)
	r.AppendHeader(&sip.CSeqHeader{SeqNo: d.cseq.Add(1), MethodName: method})
	mf := sip.MaxForwardsHeader(70)
	r.AppendHeader(&mf)
	for _, u := range d.routes {
		r.AppendHeader(&sip.RouteHeader{Address: u})
	}
	dest := sipnode.FlowAddr(d.flow)
	if len(d.routes) > 0 {
		top := d.routes[0]
		port := top.Port
		if port == 0 {
			port = 5061
		}
		dest = net.JoinHostPort(top.Host, strconv.Itoa(port))
	}
	r.SetBody(nil) // Content-Length: 0 until a body is set (stream framing)
	r.SetDestination(dest)
	r.SetTransport("TLS")
	return r
}

// send runs a request in the dialog and returns the final status (0 when
// none came) and an error unless it was a success.
func (d *uasDialog) send(ctx context.Context, node *sipnode.Node, r *sip.Request) (int, error) {
	if len(d.routes) == 0 && !node.FlowOpen(d.flow) {
		// The peer's connection is gone (a later one from its address is
		// someone else's); the core never dials a user.
		return 430, errors.New("430 Flow Failed")
	}
	if len(d.routes) > 0 { // through an edge, whose connection the core dials itself
		if err := node.Connect(ctx, r.Destination()); err != nil {
			return 0, err
		}
	}
	res, err := node.Client.Do(ctx, r, sipgo.ClientRequestAddVia)
	if err != nil {
		return 0, err
	}
	if !res.IsSuccess() {
		return res.StatusCode, fmt.Errorf("%d %s", res.StatusCode, res.Reason)
	}
	return res.StatusCode, nil
}
