package sipnode

import (
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

// A caller's CANCEL and the callee's 2xx can cross (RFC 3261 §9.1): the
// callee answered before the CANCEL reached it. That 2xx must still reach
// the caller, who then ACKs it and hangs up with BYE (§9.1, §15); dropped,
// the callee sends it again for 32 s and then ends a call no one hears.
//
// sipgo's server transaction answers a cancelled INVITE 487 itself, at
// once, so by the time such a 2xx reaches a proxy the transaction toward
// the caller has ended (PassSuccess sends it without). The client
// transaction it belongs to may have ended too, or be about to: the next
// hop's own 487 ends it, and sipgo drops a 2xx that finds it "Completed"
// (for a few hundred microseconds after a 487 here) or gone. So a proxy
// that passes a caller's CANCEL on says how to pass such a 2xx upstream
// (ExpectLateAnswer), by the branch of the Via it sent the INVITE with, for
// as long as a UAS sends a 2xx again (64·T1, §13.3.1.4), and watchLate
// takes it as it comes off the connection, before any transaction sees
// it. A 2xx that the branch's transaction also passed up is sent once
// (ClaimLate).
//
// watchLate reads a 2xx to an INVITE while sipgo's transaction goroutine
// may hold the same message: code that forwards one must change a copy
// (OwnResponse), never the message itself.

const (
	lateAnswerHold = 32 * time.Second
	maxLateAnswers = 10000
	// maxLatePasses bounds the 2xx passed per INVITE: a UAS sends one
	// again about ten times in 32 s (T1 doubling to T2); a callee sending
	// more is not relayed.
	maxLatePasses = 16
)

type lateAnswer struct {
	pass    func(*sip.Response)
	until   time.Time
	claimed []*sip.Response // the 2xx responses already passed (each once)
}

type lateAnswers struct {
	mu         sync.Mutex
	m          map[string]*lateAnswer
	fullLogged time.Time // when "table full" was last logged (once a minute)
}

func lateKey(via *sip.ViaHeader, callID *sip.CallIDHeader) (string, bool) {
	if via == nil || callID == nil {
		return "", false
	}
	branch, _ := via.Params.Get("branch")
	if branch == "" {
		return "", false
	}
	return branch + "\x00" + callID.Value(), true
}

// ExpectLateAnswer registers pass for 2xx responses to out (an INVITE this
// node sent, its Via added) that come after the caller's CANCEL. It says
// false when out has no Via branch or the table is full.
func (n *Node) ExpectLateAnswer(out *sip.Request, pass func(*sip.Response)) bool {
	key, ok := lateKey(out.Via(), out.CallID())
	if !ok {
		return false
	}
	now := time.Now()
	l := &n.late
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[string]*lateAnswer{}
	}
	if len(l.m) >= maxLateAnswers {
		for k, e := range l.m {
			if now.After(e.until) {
				delete(l.m, k)
			}
		}
		if len(l.m) >= maxLateAnswers {
			if now.Sub(l.fullLogged) > time.Minute {
				l.fullLogged = now
				n.log.Warn("late answers table full: a 2xx crossing a CANCEL will be dropped", "entries", len(l.m))
			}
			return false
		}
	}
	l.m[key] = &lateAnswer{pass: pass, until: now.Add(lateAnswerHold)}
	return true
}

// claim marks res as passed for key and returns the entry's pass, or nil
// when there is no live entry (has: false) or res was passed already.
func (l *lateAnswers) claim(key string, res *sip.Response) (pass func(*sip.Response), has bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.m[key]
	if ok && time.Now().After(e.until) {
		delete(l.m, key)
		ok = false
	}
	if !ok {
		return nil, false
	}
	if slices.Contains(e.claimed, res) || len(e.claimed) >= maxLatePasses {
		return nil, true
	}
	e.claimed = append(e.claimed, res)
	return e.pass, true
}

// watchLate sees every message the node receives, in the order it
// arrives, and passes on a 2xx to an INVITE that a caller has cancelled
// (ExpectLateAnswer).
func (n *Node) watchLate(m sip.Message) {
	res, ok := m.(*sip.Response)
	if !ok || res.StatusCode < 200 || res.StatusCode >= 300 {
		return
	}
	cseq := res.CSeq()
	if cseq == nil || cseq.MethodName != sip.INVITE {
		return
	}
	key, ok := lateKey(res.Via(), res.CallID())
	if !ok {
		return
	}
	if pass, _ := n.late.claim(key, res); pass != nil {
		n.log.Info("2xx that crossed a CANCEL passed upstream", "call_id", res.CallID().Value(), "status", res.StatusCode)
		go pass(res) // a write to another connection: not on this one's reader
	}
}

// ClaimLate says whether the branch's transaction of out should pass on
// res, a 2xx to out that came after the caller's CANCEL: false when
// watchLate has passed it already.
func (n *Node) ClaimLate(out *sip.Request, res *sip.Response) bool {
	key, ok := lateKey(out.Via(), out.CallID())
	if !ok {
		return true
	}
	pass, has := n.late.claim(key, res)
	return pass != nil || !has
}

// OwnResponse returns res, or a copy of it when it is a 2xx to an INVITE,
// for a proxy to change before it forwards it: watchLate may be reading
// such a response.
func OwnResponse(res *sip.Response) *sip.Response {
	if res.IsSuccess() {
		if cseq := res.CSeq(); cseq != nil && cseq.MethodName == sip.INVITE {
			return res.Clone()
		}
	}
	return res
}

// RespondLate sends res, a response to req, without req's server
// transaction (it answered 487 to the caller's CANCEL), over the
// connection req came on; no connection is made.
func (n *Node) RespondLate(req *sip.Request, res *sip.Response) error {
	res.SetDestination(req.Source())
	res.SetTransport(req.Transport())
	return n.Server.WriteResponse(res)
}

// PassSuccess sends a 2xx to an INVITE upstream on tx, the server
// transaction it answers, or, when tx has already answered 487 to the
// caller's CANCEL, with late (RespondLate on the node the INVITE came to).
func PassSuccess(tx sip.ServerTransaction, res *sip.Response, late func(*sip.Response)) error {
	if !errors.Is(tx.Err(), sip.ErrTransactionCanceled) {
		err := tx.Respond(res)
		if !errors.Is(err, sip.ErrTransactionCanceled) {
			return err
		}
	}
	late(res)
	return nil
}
