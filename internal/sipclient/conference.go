package sipclient

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"

	"portcullis/core/c3p"
	"portcullis/core/confinfo"
)

// Conference is this client's place in a meeting: the join dialog (INVITE,
// RFC 4579), a subscription to the conference event package (RFC 4575),
// group IM and C3P commands in the dialog.
type Conference struct {
	c      *Client
	uri    sip.Uri
	join   dialog
	sub    dialog
	reqID  atomic.Uint64
	events chan Event

	mu     sync.Mutex
	roster confinfo.Roster
	ended  bool
	stop   chan struct{} // closed when the client leaves or is removed
}

// dialog is the UAC side of a dialog.
type dialog struct {
	callID, localTag, remoteTag string
	target                      sip.Uri
	routes                      []sip.Uri
	cseq                        atomic.Uint32
}

// Event is something that happened in the meeting.
type Event struct {
	Roster *confinfo.Roster // a roster change (a copy)
	IM     *IM              // a group IM (From is the sender)
	C3P    *c3p.Response    // a C3P response the Focus sent later (after pending)
	Ended  string           // the Focus ended our participation (BYE, or a final NOTIFY)
	// Rejoined: the Focus had forgotten us (a core restart) and we joined
	// again.
	Rejoined bool
}

// Events delivers the meeting's events; it is closed when the client
// leaves or is removed.
func (cf *Conference) Events() <-chan Event { return cf.events }

// Subscription is the Call-ID of the conference-event subscription (for
// diagnostics and tests).
func (cf *Conference) Subscription() string {
	cf.mu.Lock()
	defer cf.mu.Unlock()
	return cf.sub.callID
}

// Join is the join dialog's Call-ID and the client's own (From) tag (for
// diagnostics and tests).
func (cf *Conference) Join() (callID, tag string) {
	cf.mu.Lock()
	defer cf.mu.Unlock()
	return cf.join.callID, cf.join.localTag
}

// Join joins a meeting: INVITE to the conference URI, answering the digest
// challenge (an anonymous client's password is the conference key), then a
// subscription to its roster.
func (c *Client) Join(ctx context.Context, conferenceURI string) (*Conference, error) {
	cf := &Conference{c: c, events: make(chan Event, 256), stop: make(chan struct{})}
	if err := sip.ParseUri(strings.Trim(conferenceURI, "<>"), &cf.uri); err != nil {
		return nil, fmt.Errorf("conference URI %q: %w", conferenceURI, err)
	}
	c.srv.OnNotify(cf.onNotify)
	c.srv.OnMessage(cf.onMessage)
	c.srv.OnInfo(cf.onInfo)
	c.srv.OnBye(cf.onBye)
	if err := cf.enter(ctx); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.confs = append(c.confs, cf)
	c.mu.Unlock()
	go cf.refresher()
	return cf, nil
}

// enter sends the INVITE (and ACK) and the SUBSCRIBE.
func (cf *Conference) enter(ctx context.Context) error {
	c := cf.c
	cf.mu.Lock()
	cf.join, cf.sub = dialog{}, dialog{}
	cf.mu.Unlock()
	var join, sub dialog
	inv := cf.outOfDialog(sip.INVITE, &join)
	res, err := check(c.do(ctx, inv))
	if err != nil {
		return fmt.Errorf("join: %w", err)
	}
	join.established(res)
	ack := cf.inDialog(sip.ACK, &join)
	ack.CSeq().SeqNo = res.CSeq().SeqNo
	if err := c.cl.WriteRequest(ack); err != nil {
		return fmt.Errorf("join: ACK: %w", err)
	}
	r := cf.outOfDialog(sip.SUBSCRIBE, &sub)
	r.AppendHeader(sip.NewHeader("Event", confinfo.Event))
	r.AppendHeader(sip.NewHeader("Accept", confinfo.ContentType))
	r.AppendHeader(sip.NewHeader("Expires", "3600"))
	cf.mu.Lock()
	cf.join.callID, cf.sub.callID = join.callID, sub.callID // NOTIFYs may arrive before the 200
	cf.mu.Unlock()
	res, err = check(c.do(ctx, r))
	if err != nil {
		_, _ = c.cl.Do(ctx, cf.inDialog(sip.BYE, &join))
		return fmt.Errorf("subscribe: %w", err)
	}
	sub.established(res)
	cf.mu.Lock()
	cf.join.set(&join)
	cf.sub.set(&sub)
	cf.mu.Unlock()
	return nil
}

// set copies a dialog (its counter included).
func (d *dialog) set(from *dialog) {
	d.callID, d.localTag, d.remoteTag, d.target, d.routes = from.callID, from.localTag, from.remoteTag, from.target, from.routes
	d.cseq.Store(from.cseq.Load())
}

// refresher refreshes the subscription; when the Focus no longer knows it
// (481, no answer, the connection gone: a core restart), it joins again.
func (cf *Conference) refresher() {
	every := cf.c.o.ConferenceRefresh
	if every <= 0 {
		every = 60 * defaultTimeout
	}
	for {
		select {
		case <-cf.stop:
			return
		case <-time.After(every):
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*defaultTimeout)
		r := cf.inDialog(sip.SUBSCRIBE, &cf.sub)
		r.AppendHeader(sip.NewHeader("Event", confinfo.Event))
		r.AppendHeader(sip.NewHeader("Expires", "3600"))
		res, err := cf.c.cl.Do(ctx, r)
		if err == nil && res.IsSuccess() {
			cancel()
			continue
		}
		cf.mu.Lock()
		cf.roster = confinfo.Roster{}
		cf.mu.Unlock()
		if err := cf.enter(ctx); err == nil {
			cf.emit(Event{Rejoined: true})
		}
		cancel()
	}
}

// outOfDialog starts a dialog-creating request to the conference.
func (cf *Conference) outOfDialog(method sip.RequestMethod, d *dialog) *sip.Request {
	c := cf.c
	d.callID, d.localTag = sip.GenerateTagN(16), sip.GenerateTagN(8)
	d.target = cf.uri
	r := sip.NewRequest(method, cf.uri)
	r.SetDestination(c.o.Server)
	r.SetTransport("TLS")
	r.AppendHeader(&sip.FromHeader{DisplayName: c.o.DisplayName, Address: c.aor, Params: sip.HeaderParams{{K: "tag", V: d.localTag}}})
	r.AppendHeader(&sip.ToHeader{Address: cf.uri})
	cid := sip.CallIDHeader(d.callID)
	r.AppendHeader(&cid)
	r.AppendHeader(&sip.CSeqHeader{SeqNo: d.cseq.Add(2), MethodName: method}) // a challenge answer takes the next number
	d.cseq.Add(1)
	r.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: c.aor.User, Host: c.o.Server, UriParams: sip.HeaderParams{{K: "transport", V: "tls"}}}})
	r.SetBody(nil) // Content-Length: 0 until a body is set (stream framing)
	return r
}

// established records the remote tag, target and route set of a 2xx
// (RFC 3261 §12.1.2: the route set is the Record-Route reversed).
func (d *dialog) established(res *sip.Response) {
	d.remoteTag, _ = res.To().Params.Get("tag")
	if c := res.Contact(); c != nil {
		d.target = c.Address
	}
	d.routes = nil
	for _, h := range res.GetHeaders("Record-Route") {
		if rr, ok := h.(*sip.RecordRouteHeader); ok {
			d.routes = append(d.routes, rr.Address)
		}
	}
	slices.Reverse(d.routes)
}

// inDialog builds a request in d (read under the conference's lock: a
// re-join replaces the dialogs).
func (cf *Conference) inDialog(method sip.RequestMethod, d *dialog) *sip.Request {
	c := cf.c
	cf.mu.Lock()
	defer cf.mu.Unlock()
	r := sip.NewRequest(method, d.target)
	r.SetDestination(c.o.Server)
	r.SetTransport("TLS")
	r.AppendHeader(&sip.FromHeader{DisplayName: c.o.DisplayName, Address: c.aor, Params: sip.HeaderParams{{K: "tag", V: d.localTag}}})
	r.AppendHeader(&sip.ToHeader{Address: cf.uri, Params: sip.HeaderParams{{K: "tag", V: d.remoteTag}}})
	cid := sip.CallIDHeader(d.callID)
	r.AppendHeader(&cid)
	r.AppendHeader(&sip.CSeqHeader{SeqNo: d.cseq.Add(1), MethodName: method})
	for _, u := range d.routes {
		r.AppendHeader(&sip.RouteHeader{Address: u})
	}
	r.SetBody(nil)
	return r
}

// IM sends text to everyone in the meeting.
func (cf *Conference) IM(ctx context.Context, text string) error {
	r := cf.inDialog(sip.MESSAGE, &cf.join)
	r.AppendHeader(sip.NewHeader("Content-Type", "text/plain;charset=UTF-8"))
	r.SetBody([]byte(text))
	_, err := check(cf.c.cl.Do(ctx, r))
	return err
}

// Command sends a C3P command to the Focus and returns its response.
func (cf *Conference) Command(ctx context.Context, cmd c3p.Command) (*c3p.Response, error) {
	if cmd.Keys == nil {
		cmd.Keys = &c3p.Keys{ConfEntity: cf.uri.String()}
	}
	req := c3p.NewRequest(cf.c.aor.String(), cf.uri.String(), fmt.Sprint(cf.reqID.Add(1)), cmd)
	r := cf.inDialog(sip.INFO, &cf.join)
	r.AppendHeader(sip.NewHeader("Content-Type", c3p.ContentType))
	r.SetBody(c3p.Marshal(req))
	res, err := check(cf.c.cl.Do(ctx, r))
	if err != nil {
		return nil, err
	}
	return c3p.ParseResponse(res.Body())
}

// Roster is the roster as last notified (a copy).
func (cf *Conference) Roster() confinfo.Roster {
	cf.mu.Lock()
	defer cf.mu.Unlock()
	return cf.copyRoster()
}

func (cf *Conference) copyRoster() confinfo.Roster {
	r := cf.roster
	r.Users = map[string]confinfo.User{}
	for k, v := range cf.roster.Users {
		r.Users[k] = v
	}
	return r
}

// Leave ends the subscription and the join dialog.
func (cf *Conference) Leave(ctx context.Context) {
	unsub := cf.inDialog(sip.SUBSCRIBE, &cf.sub)
	unsub.AppendHeader(sip.NewHeader("Event", confinfo.Event))
	unsub.AppendHeader(sip.NewHeader("Expires", "0"))
	_, _ = cf.c.cl.Do(ctx, unsub)
	cf.bye(ctx)
}

func (cf *Conference) bye(ctx context.Context) {
	_, _ = cf.c.cl.Do(ctx, cf.inDialog(sip.BYE, &cf.join))
	cf.end("left")
}

func (cf *Conference) end(why string) {
	cf.mu.Lock()
	defer cf.mu.Unlock()
	if cf.ended {
		return
	}
	cf.ended = true
	close(cf.stop)
	select {
	case cf.events <- Event{Ended: why}:
	default:
	}
	close(cf.events)
}

func (cf *Conference) emit(e Event) {
	cf.mu.Lock()
	defer cf.mu.Unlock()
	if cf.ended {
		return
	}
	select {
	case cf.events <- e:
	default: // a reader that does not keep up loses events, not the client
	}
}

func (cf *Conference) onNotify(req *sip.Request, tx sip.ServerTransaction) {
	cf.mu.Lock()
	subID := cf.sub.callID
	cf.mu.Unlock()
	if req.CallID().Value() != subID {
		_ = tx.Respond(sip.NewResponseFromRequest(req, 481, "Subscription Does Not Exist", nil))
		return
	}
	doc, err := confinfo.Parse(req.Body())
	if err != nil {
		_ = tx.Respond(sip.NewResponseFromRequest(req, 400, "Bad Request (conference-info)", nil))
		return
	}
	_ = tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
	if doc.State == confinfo.Deleted {
		cf.end("removed from the conference")
		return
	}
	cf.mu.Lock()
	err = cf.roster.Apply(doc)
	r := cf.copyRoster()
	cf.mu.Unlock()
	if err != nil {
		// A gap: subscribe again for full state (RFC 4575 §4.6).
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*defaultTimeout)
			defer cancel()
			refresh := cf.inDialog(sip.SUBSCRIBE, &cf.sub)
			refresh.AppendHeader(sip.NewHeader("Event", confinfo.Event))
			refresh.AppendHeader(sip.NewHeader("Expires", "3600"))
			_, _ = cf.c.cl.Do(ctx, refresh)
		}()
		return
	}
	cf.emit(Event{Roster: &r})
	if s := req.GetHeader("Subscription-State"); s != nil && strings.HasPrefix(s.Value(), "terminated") {
		cf.end("subscription ended")
	}
}

func (cf *Conference) onMessage(req *sip.Request, tx sip.ServerTransaction) {
	_ = tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
	from := req.From().Address.String()
	if h := req.GetHeader("Referred-By"); h != nil {
		from = strings.Trim(strings.TrimSpace(h.Value()), "<>")
	}
	cf.emit(Event{IM: &IM{From: from, Text: string(req.Body())}})
}

func (cf *Conference) onInfo(req *sip.Request, tx sip.ServerTransaction) {
	_ = tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
	if res, err := c3p.ParseResponse(req.Body()); err == nil {
		cf.emit(Event{C3P: res})
	}
}

func (cf *Conference) onBye(req *sip.Request, tx sip.ServerTransaction) {
	_ = tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
	cf.mu.Lock()
	joinID := cf.join.callID
	cf.mu.Unlock()
	if req.CallID().Value() == joinID {
		cf.end("removed by the conference")
	}
}
