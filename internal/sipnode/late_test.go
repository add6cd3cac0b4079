package sipnode

import (
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

func lateInvite(branch, callID string) *sip.Request {
	req := sip.NewRequest(sip.INVITE, sip.Uri{User: "bob", Host: "example.test"})
	via := &sip.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: "TLS", Host: "127.0.0.1", Port: 5061, Params: sip.NewParams()}
	via.Params.Add("branch", branch)
	req.AppendHeader(via)
	cid := sip.CallIDHeader(callID)
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: 1, MethodName: sip.INVITE})
	req.AppendHeader(&sip.FromHeader{Address: sip.Uri{User: "alice", Host: "example.test"}, Params: sip.NewParams()})
	req.AppendHeader(&sip.ToHeader{Address: sip.Uri{User: "bob", Host: "example.test"}, Params: sip.NewParams()})
	return req
}

// The table of expected late 2xx answers: only a 2xx to the INVITE it was
// registered for (same Via branch and Call-ID) is passed, each one once
// (a UAS sends it again until ACKed: each of those is passed; the same
// message seen by the transaction too is not), until the entry expires;
// the table is bounded, and expired entries make room.
func TestLateAnswers(t *testing.T) {
	n := &Node{log: slog.New(slog.DiscardHandler)}
	inv := lateInvite("z9hG4bK-1", "call-1")
	var passed atomic.Int32
	if !n.ExpectLateAnswer(inv, func(*sip.Response) { passed.Add(1) }) {
		t.Fatal("not registered")
	}
	if n.ExpectLateAnswer(sip.NewRequest(sip.INVITE, sip.Uri{Host: "example.test"}), func(*sip.Response) {}) {
		t.Error("an INVITE without a Via was registered")
	}
	ok := sip.NewResponseFromRequest(inv, 200, "OK", nil)
	for _, tc := range []struct {
		name string
		res  *sip.Response
		want bool
	}{
		{"200 to the INVITE", ok, true},
		{"the same message again", ok, false},
		{"200 sent again (a new message)", sip.NewResponseFromRequest(inv, 200, "OK", nil), true},
		{"487", sip.NewResponseFromRequest(inv, 487, "Request Terminated", nil), false},
		{"180", sip.NewResponseFromRequest(inv, 180, "Ringing", nil), false},
		{"another branch", sip.NewResponseFromRequest(lateInvite("z9hG4bK-2", "call-1"), 200, "OK", nil), false},
		{"another call", sip.NewResponseFromRequest(lateInvite("z9hG4bK-1", "call-2"), 200, "OK", nil), false},
	} {
		before := passed.Load()
		n.watchLate(tc.res)
		if tc.want {
			waitFor(t, func() bool { return passed.Load() == before+1 })
		} else {
			time.Sleep(10 * time.Millisecond)
		}
		if got := passed.Load() - before; got != map[bool]int32{true: 1}[tc.want] {
			t.Errorf("%s: passed %d times, want %v", tc.name, got, tc.want)
		}
	}
	bye := lateInvite("z9hG4bK-1", "call-1")
	bye.CSeq().MethodName = sip.BYE
	before := passed.Load()
	n.watchLate(sip.NewResponseFromRequest(bye, 200, "OK", nil))
	time.Sleep(10 * time.Millisecond)
	if passed.Load() != before {
		t.Error("a 200 to a BYE was passed as an INVITE's")
	}

	// The branch's transaction passes a 2xx watchLate has not seen, and not
	// one it has; with no entry (table full), it passes it.
	fresh := sip.NewResponseFromRequest(inv, 200, "OK", nil)
	if !n.ClaimLate(inv, fresh) || n.ClaimLate(inv, fresh) {
		t.Error("ClaimLate: a fresh 2xx is claimed once")
	}
	if n.ClaimLate(inv, ok) {
		t.Error("ClaimLate: a 2xx watchLate passed was claimed again")
	}
	if !n.ClaimLate(lateInvite("z9hG4bK-9", "call-9"), fresh) {
		t.Error("ClaimLate without an entry: not passed")
	}

	// At most maxLatePasses 2xx per INVITE are passed.
	for range 2 * maxLatePasses {
		n.watchLate(sip.NewResponseFromRequest(inv, 200, "OK", nil))
	}
	time.Sleep(20 * time.Millisecond)
	key, _ := lateKey(inv.Via(), inv.CallID())
	if got := len(n.late.m[key].claimed); got != maxLatePasses {
		t.Errorf("%d 2xx passed for one INVITE, want at most %d", got, maxLatePasses)
	}

	// Expired: not passed, and dropped.
	n.late.m[key].until = time.Now().Add(-time.Second)
	before = passed.Load()
	n.watchLate(sip.NewResponseFromRequest(inv, 200, "OK", nil))
	time.Sleep(10 * time.Millisecond)
	if passed.Load() != before {
		t.Error("an expired entry passed a 2xx")
	}
	if _, ok := n.late.m[key]; ok {
		t.Error("an expired entry was kept")
	}

	// Full: refused, until expired entries make room.
	for i := range maxLateAnswers {
		n.late.m[string(rune(i))] = &lateAnswer{until: time.Now().Add(time.Hour)}
	}
	if n.ExpectLateAnswer(lateInvite("z9hG4bK-3", "call-3"), func(*sip.Response) {}) {
		t.Error("registered past the cap")
	}
	for _, e := range n.late.m {
		e.until = time.Now().Add(-time.Second)
		break
	}
	if !n.ExpectLateAnswer(lateInvite("z9hG4bK-3", "call-3"), func(*sip.Response) {}) {
		t.Error("an expired entry did not make room")
	}
	if len(n.late.m) != maxLateAnswers {
		t.Errorf("%d entries, want %d", len(n.late.m), maxLateAnswers)
	}
}

// OwnResponse copies a 2xx to an INVITE (watchLate may be reading it) and
// nothing else.
func TestOwnResponse(t *testing.T) {
	inv := lateInvite("z9hG4bK-1", "call-1")
	msg := lateInvite("z9hG4bK-2", "call-2")
	msg.CSeq().MethodName = sip.MESSAGE
	for _, tc := range []struct {
		res  *sip.Response
		copy bool
	}{
		{sip.NewResponseFromRequest(inv, 200, "OK", nil), true},
		{sip.NewResponseFromRequest(inv, 180, "Ringing", nil), false},
		{sip.NewResponseFromRequest(inv, 486, "Busy Here", nil), false},
		{sip.NewResponseFromRequest(msg, 200, "OK", nil), false},
	} {
		if got := OwnResponse(tc.res); (got != tc.res) != tc.copy {
			t.Errorf("%s: copied %v, want %v", tc.res.Short(), got != tc.res, tc.copy)
		}
	}
}

func waitFor(t *testing.T, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !ok(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
	}
}
