package core_test

import (
	"context"
	"crypto/tls"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"portcullis/core"
)

const sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"

// phone is a registered user agent that answers calls (or only rings).
type phone struct {
	*sipUser
	dua                 *sipgo.DialogUA
	answer              bool
	invites, acks, byes atomic.Int32
	cancels             atomic.Int32
	session             atomic.Pointer[sipgo.DialogServerSession]
	callerSession       atomic.Pointer[sipgo.DialogClientSession]
}

func newPhone(t *testing.T, s *core.Server, roots *tls.Config, aor, user, port string, answer bool) *phone {
	t.Helper()
	u := newSIPUser(t, s, roots)
	var contact sip.Uri
	if err := sip.ParseUri("sip:"+user+"@127.0.0.1:"+port+";transport=tls", &contact); err != nil {
		t.Fatal(err)
	}
	p := &phone{sipUser: u, answer: answer, dua: &sipgo.DialogUA{Client: u.client, ContactHDR: sip.ContactHeader{Address: contact}}}
	u.server.OnInvite(func(req *sip.Request, tx sip.ServerTransaction) {
		p.invites.Add(1)
		sess, err := p.dua.ReadInvite(req, tx)
		if err != nil {
			return
		}
		p.session.Store(sess)
		_ = sess.Respond(180, "Ringing", nil)
		if !p.answer {
			<-tx.Done() // ring until cancelled
			p.cancels.Add(1)
			return
		}
		_ = sess.RespondSDP([]byte(sdp))
		<-tx.Done()
	})
	u.server.OnAck(func(req *sip.Request, tx sip.ServerTransaction) {
		p.acks.Add(1)
		if sess := p.session.Load(); sess != nil {
			_ = sess.ReadAck(req, tx)
		}
	})
	u.server.OnBye(func(req *sip.Request, tx sip.ServerTransaction) {
		p.byes.Add(1)
		callID := req.CallID().Value()
		if sess := p.session.Load(); sess != nil && sess.InviteRequest.CallID().Value() == callID {
			_ = sess.ReadBye(req, tx)
			return
		}
		if cs := p.callerSession.Load(); cs != nil && cs.InviteRequest.CallID().Value() == callID {
			_ = cs.ReadBye(req, tx)
			return
		}
		_ = tx.Respond(sip.NewResponseFromRequest(req, 481, "Call/Transaction Does Not Exist", nil))
	})
	if aor != "" {
		if res := u.register(aor, user, alicePW, []string{"<" + contact.String() + ">"}); res.StatusCode != 200 {
			t.Fatalf("register %s: %d", aor, res.StatusCode)
		}
	}
	return p
}

// call invites `to` from p (as `from`) and waits for the answer.
func (p *phone) call(ctx context.Context, from, user, to string) (*sipgo.DialogClientSession, error) {
	var fromURI, toURI sip.Uri
	_ = sip.ParseUri(from, &fromURI)
	_ = sip.ParseUri(to, &toURI)
	target := toURI
	target.UriParams = sip.HeaderParams{{K: "transport", V: "tls"}}
	req := sip.NewRequest(sip.INVITE, target)
	req.SetDestination(p.dest)
	req.AppendHeader(&sip.FromHeader{Address: fromURI, Params: sip.HeaderParams{{K: "tag", V: sip.GenerateTagN(8)}}})
	req.AppendHeader(&sip.ToHeader{Address: toURI})
	req.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	req.SetBody([]byte(sdp))
	sess, err := p.dua.WriteInvite(ctx, req)
	if err != nil {
		return nil, err
	}
	p.callerSession.Store(sess)
	return sess, sess.WaitAnswer(ctx, sipgo.AnswerOptions{Username: user, Password: alicePW})
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCalls(t *testing.T) {
	s, pki, _ := startCore(t)
	ctx := context.Background()
	for _, aor := range []string{"sip:alice@example.test", "sip:bob@example.test", "sip:carol@example.test"} {
		if err := core.AddUser(ctx, s.Store(), aor, alicePW); err != nil {
			t.Fatal(err)
		}
	}
	roots := &tls.Config{RootCAs: accesstestRoots(t, pki), ServerName: "core1.internal", MinVersion: tls.VersionTLS12}
	alice := newPhone(t, s, roots, "sip:alice@example.test", "alice", "7100", true)
	bobDesk := newPhone(t, s, roots, "sip:bob@example.test", "bob", "7201", true)
	bobMobile := newPhone(t, s, roots, "sip:bob@example.test", "bob", "7202", false)

	// Alice calls bob: both devices ring, the desk answers, the mobile is cancelled.
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	sess, err := alice.call(cctx, "sip:alice@example.test", "alice", "sip:bob@example.test")
	if err != nil {
		t.Fatalf("call: %v", err)
	}
	if sess.InviteResponse.StatusCode != 200 {
		t.Fatalf("answer %d", sess.InviteResponse.StatusCode)
	}
	if err := sess.Ack(cctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the desk gets the ACK", func() bool { return bobDesk.acks.Load() == 1 })
	eventually(t, "the mobile is cancelled", func() bool { return bobMobile.cancels.Load() == 1 })
	if bobMobile.invites.Load() != 1 {
		t.Fatal("the mobile never rang")
	}
	// Alice hangs up through the core.
	if err := sess.Bye(cctx); err != nil {
		t.Fatalf("BYE from the caller: %v", err)
	}
	eventually(t, "the desk gets the BYE", func() bool { return bobDesk.byes.Load() == 1 })

	// Bob calls alice; alice answers; bob's... the callee hangs up.
	alice.session.Store(nil)
	sess2, err := bobDesk.call(cctx, "sip:bob@example.test", "bob", "sip:alice@example.test")
	if err != nil || sess2.InviteResponse.StatusCode != 200 {
		t.Fatalf("second call: %v", err)
	}
	_ = sess2.Ack(cctx)
	eventually(t, "alice gets the ACK", func() bool { return alice.acks.Load() == 1 })
	if err := alice.session.Load().Bye(cctx); err != nil {
		t.Fatalf("BYE from the callee: %v", err)
	}
	eventually(t, "bob gets the callee's BYE", func() bool { return bobDesk.byes.Load() == 2 })

	// The caller cancels while it rings: 487, and the callee's ringing stops.
	carolRings := newPhone(t, s, roots, "sip:carol@example.test", "carol", "7300", false)
	rctx, rcancel := context.WithCancel(ctx)
	go func() {
		eventually(t, "carol rings", func() bool { return carolRings.invites.Load() == 1 })
		rcancel()
	}()
	if _, err := alice.call(rctx, "sip:alice@example.test", "alice", "sip:carol@example.test"); err == nil {
		t.Fatal("a cancelled call was answered")
	}
	eventually(t, "carol's ringing is cancelled", func() bool { return carolRings.cancels.Load() == 1 })

	// No such user; a user with no device.
	for to, want := range map[string]int{"sip:nobody@example.test": 404} {
		_, err := alice.call(cctx, "sip:alice@example.test", "alice", to)
		var de *sipgo.ErrDialogResponse
		if !errors.As(err, &de) || de.Res.StatusCode != want {
			t.Errorf("call %s: %v, want %d", to, err, want)
		}
	}
}
