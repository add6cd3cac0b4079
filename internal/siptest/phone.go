package siptest

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"

	"portcullis/internal/sipnode"
)

// SDP is a minimal G.711 offer or answer.
const SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"

// Phone answers calls on a UA (or only rings) and places calls, keeping
// each dialog by Call-ID so that in-dialog requests find theirs.
type Phone struct {
	*UA
	Dialog *sipgo.DialogUA
	Answer bool
	// Reliable makes the phone answer an INVITE with a reliable 183 (RFC
	// 3262: Require: 100rel, RSeq) and wait for its PRACK before the 200.
	Reliable bool
	// Pracks counts PRACKs received for reliable provisional responses.
	Pracks atomic.Int32
	hold   atomic.Pointer[chan struct{}] // HoldAnswers
	// Reject, when set, is the final status the phone answers calls with
	// after ringing (486 Busy Here, 603 Decline, …).
	Reject atomic.Int32
	// CrossAnswer makes the phone send a 200 for a call cancelled while
	// it rang, as if it had answered as the CANCEL came
	// (CallCancelCrossed).
	CrossAnswer atomic.Bool
	pracked     chan struct{}
	Invites     atomic.Int32
	// Answered counts the calls the phone answers 200 in their
	// transaction (counted as it sends the 200).
	Answered atomic.Int32
	// ReInvites counts INVITEs in a dialog of this phone (answered 200).
	ReInvites atomic.Int32
	Acks      atomic.Int32
	Byes      atomic.Int32
	Cancels   atomic.Int32
	// Others counts UPDATE, INFO, PRACK and OPTIONS received (answered 200
	// in a dialog of this phone or out of dialog, 481 for an unknown
	// dialog).
	Others atomic.Int32

	mu         sync.Mutex
	incoming   map[string]*sipgo.DialogServerSession
	outgoing   map[string]*sipgo.DialogClientSession
	LastInvite atomic.Pointer[sip.Request]
}

// NewPhone serves calls on u with contact (sip:user@host:port;transport=tls).
func NewPhone(u *UA, contact string, answer bool) *Phone {
	p := &Phone{UA: u, Answer: answer, Dialog: &sipgo.DialogUA{Client: u.Client, ContactHDR: sip.ContactHeader{Address: uri(u.T, contact)}},
		incoming: map[string]*sipgo.DialogServerSession{}, outgoing: map[string]*sipgo.DialogClientSession{}, pracked: make(chan struct{}, 1)}
	u.Server.OnInvite(func(req *sip.Request, tx sip.ServerTransaction) {
		if req.To().Params.Has("tag") && p.knows(req) { // a re-INVITE: accepted as offered
			p.ReInvites.Add(1)
			res := sip.NewResponseFromRequest(req, 200, "OK", []byte(SDP))
			res.AppendHeader(sip.HeaderClone(&p.Dialog.ContactHDR))
			res.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
			_ = tx.Respond(res)
			return
		}
		p.Invites.Add(1)
		p.LastInvite.Store(req)
		sess, err := p.Dialog.ReadInvite(req, tx)
		if err != nil {
			return
		}
		p.mu.Lock()
		p.incoming[req.CallID().Value()] = sess
		p.mu.Unlock()
		if p.Reliable {
			_ = sess.Respond(183, "Session Progress", nil, sip.NewHeader("Require", "100rel"), sip.NewHeader("RSeq", "1"))
			select {
			case <-p.pracked:
			case <-time.After(5 * time.Second):
				_ = sess.Respond(504, "No PRACK", nil)
				return
			}
		} else {
			_ = sess.Respond(180, "Ringing", nil)
		}
		if !p.Answer {
			<-tx.Done()
			p.cancelled(sess, req)
			return
		}
		if code := int(p.Reject.Load()); code != 0 {
			_ = sess.Respond(code, "Rejected", nil)
			return
		}
		if h := p.hold.Load(); h != nil {
			select {
			case <-*h:
			case <-tx.Done():
				p.cancelled(sess, req)
				return
			}
		}
		p.Answered.Add(1)
		_ = sess.RespondSDP([]byte(SDP)) // returns once ACKed
		<-tx.Done()
	})
	u.Server.OnAck(func(req *sip.Request, tx sip.ServerTransaction) {
		p.Acks.Add(1)
		if s := p.in(req); s != nil {
			_ = s.ReadAck(req, tx)
		}
	})
	u.Server.OnBye(func(req *sip.Request, tx sip.ServerTransaction) {
		p.Byes.Add(1)
		if s := p.in(req); s != nil {
			_ = s.ReadBye(req, tx)
			return
		}
		p.mu.Lock()
		c := p.outgoing[req.CallID().Value()]
		p.mu.Unlock()
		if c != nil {
			_ = c.ReadBye(req, tx)
			return
		}
		_ = tx.Respond(sip.NewResponseFromRequest(req, 481, "Call/Transaction Does Not Exist", nil))
	})
	other := func(req *sip.Request, tx sip.ServerTransaction) {
		p.Others.Add(1)
		code, reason := 200, "OK"
		if to := req.To(); to != nil && to.Params.Has("tag") && !p.knows(req) {
			code, reason = 481, "Call/Transaction Does Not Exist"
		}
		_ = tx.Respond(sip.NewResponseFromRequest(req, code, reason, nil))
	}
	u.Server.OnUpdate(other)
	u.Server.OnInfo(other)
	u.Server.OnPrack(func(req *sip.Request, tx sip.ServerTransaction) {
		if rack := req.GetHeader("RAck"); rack != nil && p.in(req) != nil {
			p.Pracks.Add(1)
			_ = tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
			select {
			case p.pracked <- struct{}{}:
			default:
			}
			return
		}
		other(req, tx)
	})
	u.Server.OnOptions(other)
	return p
}

// HoldAnswers makes the phone ring without answering until release is
// called (then it answers the calls ringing).
func (p *Phone) HoldAnswers() (release func()) {
	ch := make(chan struct{})
	p.hold.Store(&ch)
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}

// knows says whether req belongs to a dialog of this phone.
func (p *Phone) knows(req *sip.Request) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	id := req.CallID().Value()
	return p.incoming[id] != nil || p.outgoing[id] != nil
}

// ReInvite sends an INVITE with an offer in the dialog of a call this
// phone placed (sess) or answered (in), waits for the 200 and ACKs it.
func ReInvite(ctx context.Context, sess *sipgo.DialogClientSession, in *sipgo.DialogServerSession) (*sip.Response, error) {
	var contact sip.Uri
	var do func(context.Context, *sip.Request) (*sip.Response, error)
	var write func(*sip.Request) error
	if sess != nil {
		contact, do, write = *sess.InviteResponse.Contact().Address.Clone(), sess.Do, sess.WriteRequest
	} else {
		contact, do, write = *in.InviteRequest.Contact().Address.Clone(), in.Do, in.WriteRequest
	}
	req := sip.NewRequest(sip.INVITE, contact)
	req.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	req.SetBody([]byte(SDP))
	res, err := do(ctx, req)
	if err != nil || res.StatusCode != 200 {
		return res, err
	}
	return res, write(sip.NewRequest(sip.ACK, *res.Contact().Address.Clone()))
}

// InDialog sends method (UPDATE, INFO, …) in the dialog of a call this
// phone placed (sess) or answered (in), to the remote target, and returns
// the final response.
func InDialog(ctx context.Context, sess *sipgo.DialogClientSession, in *sipgo.DialogServerSession, method sip.RequestMethod) (*sip.Response, error) {
	if sess != nil {
		return sess.Do(ctx, sip.NewRequest(method, *sess.InviteResponse.Contact().Address.Clone()))
	}
	return in.Do(ctx, sip.NewRequest(method, *in.InviteRequest.Contact().Address.Clone()))
}

func (p *Phone) in(req *sip.Request) *sipgo.DialogServerSession {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.incoming[req.CallID().Value()]
}

// Incoming is the dialog of the last call this phone answered.
func (p *Phone) Incoming() *sipgo.DialogServerSession {
	if r := p.LastInvite.Load(); r != nil {
		return p.in(r)
	}
	return nil
}

// Call invites `to` and waits for the answer, authenticating as user.
func (p *Phone) Call(ctx context.Context, from, user, password, to string) (*sipgo.DialogClientSession, error) {
	return p.CallWith(ctx, from, user, password, to)
}

// CallWith is Call with extra headers on the INVITE (a pre-loaded Route).
func (p *Phone) CallWith(ctx context.Context, from, user, password, to string, extra ...sip.Header) (*sipgo.DialogClientSession, error) {
	req := p.newRequest(sip.INVITE, from, to)
	for _, h := range extra {
		req.AppendHeader(h)
	}
	req.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	req.SetBody([]byte(SDP))
	sess, err := p.Dialog.WriteInvite(ctx, req)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.outgoing[req.CallID().Value()] = sess
	p.mu.Unlock()
	return sess, sess.WaitAnswer(ctx, sipgo.AnswerOptions{Username: user, Password: password, OnResponse: func(res *sip.Response) error {
		if res.StatusCode > 100 && res.StatusCode < 200 && res.GetHeader("RSeq") != nil {
			return p.prack(ctx, sess.InviteRequest, res)
		}
		return nil
	}})
}

// CallAcked places a call as Call does, fails t unless it is answered
// 200, ACKs it, and waits until the callee's phone has the ACK.
func (p *Phone) CallAcked(ctx context.Context, t interface {
	Helper()
	Fatalf(string, ...any)
}, callee *Phone, from, user, password, to string) *sipgo.DialogClientSession {
	t.Helper()
	acks := callee.Acks.Load()
	sess, err := p.Call(ctx, from, user, password, to)
	if err != nil || sess.InviteResponse.StatusCode != 200 {
		t.Fatalf("%s calls %s: %v", user, to, err)
	}
	if err := sess.Ack(ctx); err != nil {
		t.Fatalf("%s ACKs: %v", user, err)
	}
	Eventually(t, to+" gets the ACK", func() bool { return callee.Acks.Load() == acks+1 })
	return sess
}

// prack acknowledges a reliable provisional response (RFC 3262 §7.2) in
// its early dialog: to its Contact, along the route set its Record-Route
// gives (reversed, §12.1.2).
func (p *Phone) prack(ctx context.Context, invite *sip.Request, res *sip.Response) error {
	req, err := p.dialogRequest(sip.PRACK, invite, res, invite.CSeq().SeqNo+1)
	if err != nil {
		return err
	}
	req.AppendHeader(sip.NewHeader("RAck", res.GetHeader("RSeq").Value()+" "+strconv.Itoa(int(invite.CSeq().SeqNo))+" INVITE"))
	ans, err := p.UA.Client.Do(ctx, req)
	if err != nil {
		return err
	}
	if ans.StatusCode != 200 {
		return fmt.Errorf("PRACK answered %d", ans.StatusCode)
	}
	return nil
}

// dialogRequest builds a request in the dialog res (a response to invite
// with a To tag) sets up, as its caller: to res's Contact, along the route
// set its Record-Route gives (reversed, §12.1.2), sent to the UA's Dest.
func (p *Phone) dialogRequest(method sip.RequestMethod, invite *sip.Request, res *sip.Response, seq uint32) (*sip.Request, error) {
	contact := res.Contact()
	if contact == nil {
		return nil, fmt.Errorf("%d to INVITE without Contact", res.StatusCode)
	}
	req := sip.NewRequest(method, *contact.Address.Clone())
	req.SetDestination(p.UA.Dest)
	rrs := res.GetHeaders("Record-Route")
	for i := len(rrs) - 1; i >= 0; i-- {
		req.AppendHeader(sip.NewHeader("Route", rrs[i].Value()))
	}
	req.AppendHeader(sip.HeaderClone(invite.From()))
	req.AppendHeader(sip.HeaderClone(res.To()))
	req.AppendHeader(sip.HeaderClone(invite.CallID()))
	req.AppendHeader(&sip.CSeqHeader{SeqNo: seq, MethodName: method})
	return req, nil
}

// Eventually waits up to 5 s for ok.
func Eventually(t interface {
	Helper()
	Fatalf(string, ...any)
}, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// CallAndCancel invites `to`, authenticating as user, and sends the CANCEL
// `after` the INVITE, before any answer (as a client hanging up at once
// does). A CANCEL that arrived before the INVITE was known is
// answered 481; then it is sent again after the first provisional
// response, as RFC 3261 §9.1 has it. It returns the statuses the CANCEL
// (the last one sent) and the INVITE were answered with.
func (p *Phone) CallAndCancel(ctx context.Context, from, user, password, to string, after time.Duration) (cancelStatus, inviteStatus int, err error) {
	inv, tx, err := p.invite(ctx, from, user, password, to)
	if err != nil {
		return 0, 0, err
	}
	defer tx.Terminate()
	cancel := func() (int, error) {
		r, err := p.Client.Do(ctx, sipnode.CancelRequest(inv))
		if err != nil {
			return 0, err
		}
		return r.StatusCode, nil
	}
	time.Sleep(after)
	if cancelStatus, err = cancel(); err != nil {
		return 0, 0, err
	}
	for {
		select {
		case r := <-tx.Responses():
			if r.IsProvisional() {
				if r.StatusCode > 100 && cancelStatus == 481 {
					if cancelStatus, err = cancel(); err != nil {
						return 0, 0, err
					}
				}
				continue
			}
			return cancelStatus, r.StatusCode, nil
		case <-tx.Done():
			return cancelStatus, 0, tx.Err()
		case <-ctx.Done():
			return cancelStatus, 0, ctx.Err()
		}
	}
}

// invite sends an INVITE to `to` with credentials: the first is answered
// 407, the second, with its answer, is returned with its transaction.
func (p *Phone) invite(ctx context.Context, from, user, password, to string) (*sip.Request, sip.ClientTransaction, error) {
	req := p.newRequest(sip.INVITE, from, to)
	req.AppendHeader(sip.HeaderClone(&p.Dialog.ContactHDR))
	req.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	req.SetBody([]byte(SDP))
	res, err := p.Client.Do(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	if res.StatusCode != 407 {
		return nil, nil, fmt.Errorf("INVITE without credentials answered %d, want 407", res.StatusCode)
	}
	chal, err := digest.ParseChallenge(res.GetHeader("Proxy-Authenticate").Value())
	if err != nil {
		return nil, nil, err
	}
	cred, err := digest.Digest(chal, digest.Options{Method: "INVITE", URI: req.Recipient.Addr(), Username: user, Password: password, Count: 1})
	if err != nil {
		return nil, nil, err
	}
	inv := req.Clone()
	inv.RemoveHeader("Via") // a new transaction: the client adds a new branch
	inv.CSeq().SeqNo++
	inv.AppendHeader(sip.NewHeader("Proxy-Authorization", cred.String()))
	tx, err := p.Client.TransactionRequest(ctx, inv)
	if err != nil {
		return nil, nil, err
	}
	return inv, tx, nil
}

// CrossHooks are run by CallCancelCrossed as the call goes: Ringing
// before the CANCEL is sent, Cancelled once the 487 has come (which must
// then come before the 2xx), Answered once the 2xx has (before the ACK).
// Any may be nil.
type CrossHooks struct{ Ringing, Cancelled, Answered func() }

// CallCancelCrossed invites `to`, cancels the call once it rings, and
// waits for the INVITE's 487 and then for a 2xx that crossed the CANCEL
// (the callee answered before the CANCEL reached it: RFC 3261 §9.1). That
// 2xx comes after the INVITE's 487 (watched off the connection: see
// UA.watchFinals); the phone ACKs it and hangs up with BYE, as a caller
// must. It returns the 2xx and the
// status the BYE was answered with.
func (p *Phone) CallCancelCrossed(ctx context.Context, from, user, password, to string, hooks CrossHooks) (*sip.Response, int, error) {
	run := func(f func()) {
		if f != nil {
			f()
		}
	}
	inv, tx, err := p.invite(ctx, from, user, password, to)
	if err != nil {
		return nil, 0, err
	}
	defer tx.Terminate()
	finals, stop := p.Watch(inv.CallID().Value())
	defer stop()
	ringing := func() error {
		for {
			select {
			case r := <-tx.Responses():
				if r.StatusCode > 100 && r.StatusCode < 200 {
					return nil
				}
				if !r.IsProvisional() {
					return fmt.Errorf("INVITE answered %d before it rang", r.StatusCode)
				}
			case <-tx.Done():
				return fmt.Errorf("INVITE ended before it rang: %v", tx.Err())
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	final := func() (*sip.Response, error) {
		for {
			select {
			case r := <-finals:
				if r.CSeq().SeqNo == inv.CSeq().SeqNo { // not the first INVITE's 407
					return r, nil
				}
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	if err := ringing(); err != nil {
		return nil, 0, err
	}
	run(hooks.Ringing)
	if ans, err := p.Client.Do(ctx, sipnode.CancelRequest(inv)); err != nil || ans.StatusCode != 200 {
		return nil, 0, fmt.Errorf("CANCEL: %v %v", ans, err)
	}
	// The 487 comes first, unless a proxy's 487 was held up (its thread
	// not scheduled) for as long as the callee's 2xx took to overtake it.
	ok, err := final()
	if err != nil {
		return nil, 0, fmt.Errorf("no final response: %w", err)
	}
	if ok.StatusCode == 487 {
		run(hooks.Cancelled)
		if ok, err = final(); err != nil {
			return nil, 0, fmt.Errorf("no 2xx after the 487: %w", err)
		}
	} else if hooks.Cancelled != nil {
		return nil, 0, fmt.Errorf("cancelled INVITE answered %d before the callee was let answer", ok.StatusCode)
	}
	if !ok.IsSuccess() {
		return nil, 0, fmt.Errorf("cancelled INVITE answered %d, want 487 and a 2xx", ok.StatusCode)
	}
	run(hooks.Answered)
	ack, err := p.dialogRequest(sip.ACK, inv, ok, inv.CSeq().SeqNo)
	if err != nil {
		return ok, 0, err
	}
	if err := p.Client.WriteRequest(ack); err != nil {
		return ok, 0, err
	}
	bye, err := p.dialogRequest(sip.BYE, inv, ok, inv.CSeq().SeqNo+1)
	if err != nil {
		return ok, 0, err
	}
	ans, err := p.Client.Do(ctx, bye)
	if err != nil {
		return ok, 0, err
	}
	return ok, ans.StatusCode, nil
}

// cancelled counts a call cancelled while it rang. With CrossAnswer, the
// phone then sends its 200 anyway, as a phone picked up just before the
// CANCEL reached it would have: after the transaction's 487, so without
// the transaction.
func (p *Phone) cancelled(sess *sipgo.DialogServerSession, req *sip.Request) {
	p.Cancels.Add(1)
	if !p.CrossAnswer.Load() {
		return
	}
	res := sip.NewSDPResponseFromRequest(sess.InviteRequest, []byte(SDP))
	res.AppendHeader(sip.HeaderClone(&p.Dialog.ContactHDR))
	res.SetDestination(req.Source())
	res.SetTransport(req.Transport())
	if err := p.Server.WriteResponse(res); err != nil {
		p.T.Errorf("answering a cancelled call: %v", err)
	}
}

// CheckCrossed checks what CallCancelCrossed returned (res, bye, err): the
// 2xx came, and the callee got the ACK (acks before the call: acks) and the
// BYE (byes), which it answered 200.
func CheckCrossed(t testing.TB, callee *Phone, acks, byes int32, res *sip.Response, bye int, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("the caller never got the 2xx that crossed its CANCEL: %v", err)
	}
	if res.StatusCode != 200 || !res.To().Params.Has("tag") {
		t.Fatalf("crossing answer: %s", res.StartLine())
	}
	Eventually(t, "the callee gets the ACK", func() bool { return callee.Acks.Load() == acks+1 })
	if bye != 200 {
		t.Errorf("BYE after the crossing answer: %d, want 200", bye)
	}
	if got := callee.Byes.Load() - byes; got != 1 {
		t.Errorf("the callee got %d BYEs, want 1", got)
	}
}
