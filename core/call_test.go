package core_test

import (
	"context"
	"crypto/tls"
	"errors"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"portcullis/internal/siptest"
)

// registeredPhone is a phone of user (aor) at 127.0.0.1:port, connected to
// dest (the core's users listener, or a pipe to it) and registered.
func registeredPhone(t *testing.T, dest string, roots *tls.Config, aor, user, port string, answer bool) *siptest.Phone {
	t.Helper()
	contact := "sip:" + user + "@127.0.0.1:" + port + ";transport=tls"
	p := siptest.NewPhone(siptest.New(t, dest, roots), contact, answer)
	if res := p.Register(aor, user, alicePW, "<"+contact+">"); res.StatusCode != 200 {
		t.Fatalf("register %s: %d", aor, res.StatusCode)
	}
	return p
}

func TestCalls(t *testing.T) {
	s, roots := users(t, "sip:alice@example.test", "sip:bob@example.test", "sip:carol@example.test")
	phone := func(aor, user, port string, answer bool) *siptest.Phone {
		return registeredPhone(t, s.UsersAddr(), roots, aor, user, port, answer)
	}
	alice := phone("sip:alice@example.test", "alice", "7100", true)
	bobDesk := phone("sip:bob@example.test", "bob", "7201", true)
	bobMobile := phone("sip:bob@example.test", "bob", "7202", false)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Alice calls bob: both devices ring, the desk answers, the mobile is cancelled.
	sess, err := alice.Call(ctx, "sip:alice@example.test", "alice", alicePW, "sip:bob@example.test")
	if err != nil || sess.InviteResponse.StatusCode != 200 {
		t.Fatalf("call: %v", err)
	}
	if err := sess.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	siptest.Eventually(t, "the desk gets the ACK", func() bool { return bobDesk.Acks.Load() == 1 })
	siptest.Eventually(t, "the mobile is cancelled", func() bool { return bobMobile.Cancels.Load() == 1 })
	if bobMobile.Invites.Load() != 1 {
		t.Fatal("the mobile never rang")
	}
	if err := sess.Bye(ctx); err != nil {
		t.Fatalf("BYE from the caller: %v", err)
	}
	siptest.Eventually(t, "the desk gets the BYE", func() bool { return bobDesk.Byes.Load() == 1 })

	// Bob calls alice; alice (the callee) hangs up.
	sess2, err := bobDesk.Call(ctx, "sip:bob@example.test", "bob", alicePW, "sip:alice@example.test")
	if err != nil || sess2.InviteResponse.StatusCode != 200 {
		t.Fatalf("second call: %v", err)
	}
	_ = sess2.Ack(ctx)
	siptest.Eventually(t, "alice gets the ACK", func() bool { return alice.Acks.Load() == 1 })
	if err := alice.Incoming().Bye(ctx); err != nil {
		t.Fatalf("BYE from the callee: %v", err)
	}
	siptest.Eventually(t, "bob gets the callee's BYE", func() bool { return bobDesk.Byes.Load() == 2 })

	// The caller cancels while it rings: the callee's ringing stops.
	carol := phone("sip:carol@example.test", "carol", "7300", false)
	rctx, rcancel := context.WithCancel(ctx)
	go func() {
		siptest.Eventually(t, "carol rings", func() bool { return carol.Invites.Load() == 1 })
		rcancel()
	}()
	if _, err := alice.Call(rctx, "sip:alice@example.test", "alice", alicePW, "sip:carol@example.test"); err == nil {
		t.Fatal("a cancelled call was answered")
	}
	siptest.Eventually(t, "carol's ringing is cancelled", func() bool { return carol.Cancels.Load() == 1 })

	// No such user.
	_, err = alice.Call(ctx, "sip:alice@example.test", "alice", alicePW, "sip:nobody@example.test")
	var de *sipgo.ErrDialogResponse
	if !errors.As(err, &de) || de.Res.StatusCode != 404 {
		t.Errorf("call to an unknown user: %v, want 404", err)
	}
}

// A callee's 200 that crosses the caller's CANCEL (the callee answered
// before the CANCEL reached it) still reaches the caller after the 487, and
// the caller's ACK and BYE reach the callee (RFC 3261 §9.1): dropped, the
// callee would send it again for 32 s and then hang up a call no one
// hears. Both ways it reaches the core: while the branch is still open
// (the CANCEL toward the callee held up), and after the callee's own 487
// has ended the branch.
func TestCancelCrossesAnswer(t *testing.T) {
	s, roots := users(t, "sip:alice@example.test", "sip:bob@example.test", "sip:carol@example.test")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	phone := func(aor, user, port, dest string, answer bool) *siptest.Phone {
		return registeredPhone(t, dest, roots, aor, user, port, answer)
	}
	alice := phone("sip:alice@example.test", "alice", "7100", s.UsersAddr(), true)

	t.Run("branch open", func(t *testing.T) {
		pipe := siptest.NewPipe(t, s.UsersAddr())
		bob := phone("sip:bob@example.test", "bob", "7200", pipe.Addr(), true)
		release := bob.HoldAnswers()
		res, bye, err := alice.CallCancelCrossed(ctx, "sip:alice@example.test", "alice", alicePW, "sip:bob@example.test", siptest.CrossHooks{
			Ringing: pipe.Hold, // the core's CANCEL waits on the way to bob
			Cancelled: func() {
				release() // bob answers, not having seen the CANCEL
				siptest.Eventually(t, "bob answers", func() bool { return bob.Answered.Load() == 1 })
			},
			Answered: pipe.Release,
		})
		siptest.CheckCrossed(t, bob, 0, 0, res, bye, err)
	})
	t.Run("branch ended", func(t *testing.T) {
		carol := phone("sip:carol@example.test", "carol", "7300", s.UsersAddr(), false)
		carol.CrossAnswer.Store(true) // her 200 comes after her own 487
		res, bye, err := alice.CallCancelCrossed(ctx, "sip:alice@example.test", "alice", alicePW, "sip:carol@example.test", siptest.CrossHooks{})
		siptest.CheckCrossed(t, carol, 0, 0, res, bye, err)
	})
}

// A draining core refuses new calls (503) but still serves the requests of
// calls under way: the callee hangs up and the caller gets the BYE; a call
// whose INVITE was answered as the drain began still gets its ACK.
func TestDrainLetsCallsEnd(t *testing.T) {
	s, roots := users(t, "sip:alice@example.test", "sip:bob@example.test")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	alice := registeredPhone(t, s.UsersAddr(), roots, "sip:alice@example.test", "alice", "7100", true)
	bob := registeredPhone(t, s.UsersAddr(), roots, "sip:bob@example.test", "bob", "7200", true)
	first := alice.CallAcked(ctx, t, bob, "sip:alice@example.test", "alice", alicePW, "sip:bob@example.test")

	// The second call is answered while the drain begins; its ACK comes
	// after.
	release := bob.HoldAnswers()
	answered := make(chan error, 1)
	var second *sipgo.DialogClientSession
	go func() {
		var err error
		second, err = alice.Call(ctx, "sip:alice@example.test", "alice", alicePW, "sip:bob@example.test")
		answered <- err
	}()
	siptest.Eventually(t, "bob's second phone call rings", func() bool { return bob.Invites.Load() == 2 })
	drained := make(chan error, 1)
	go func() { drained <- s.Drain(ctx) }()
	siptest.Eventually(t, "the drain begins", func() bool { return s.Ready() != nil })
	_, err := alice.Call(ctx, "sip:alice@example.test", "alice", alicePW, "sip:bob@example.test")
	if de := (*sipgo.ErrDialogResponse)(nil); !errors.As(err, &de) || de.Res.StatusCode != 503 {
		t.Fatalf("a new call while draining: %v, want 503", err)
	}
	release()
	if err := <-answered; err != nil || second.InviteResponse.StatusCode != 200 {
		t.Fatalf("the call answered as the drain began: %v", err)
	}
	if err := second.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	siptest.Eventually(t, "its ACK reaches bob", func() bool { return bob.Acks.Load() == 2 })
	if err := <-drained; err != nil {
		t.Fatalf("drain: %v", err)
	}
	for i, hangUp := range []func() error{
		func() error { return bob.Incoming().Bye(ctx) }, // the callee hangs up the second
		func() error { return first.Bye(ctx) },          // the caller the first
	} {
		if err := hangUp(); err != nil {
			t.Fatalf("BYE %d while draining: %v", i+1, err)
		}
	}
	if alice.Byes.Load() != 1 || bob.Byes.Load() != 1 {
		t.Fatalf("BYEs: alice %d, bob %d; want 1 and 1", alice.Byes.Load(), bob.Byes.Load())
	}
}

// A Record-Route token lets its holder send requests in the dialog it was
// made for and nowhere else: a party to one call cannot, by putting its
// Route on a request, reach another user without authenticating (a
// MESSAGE, with or without a To tag, a re-INVITE), nor use it outside the
// dialog's Call-ID. The dialog itself still works.
func TestRouteTokensStayInTheirDialog(t *testing.T) {
	s, roots := users(t, "sip:alice@example.test", "sip:bob@example.test", "sip:carol@example.test")
	alice := registeredPhone(t, s.UsersAddr(), roots, "sip:alice@example.test", "alice", "7100", true)
	bob := registeredPhone(t, s.UsersAddr(), roots, "sip:bob@example.test", "bob", "7200", true)
	carol := registeredPhone(t, s.UsersAddr(), roots, "sip:carol@example.test", "carol", "7300", true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess := alice.CallAcked(ctx, t, bob, "sip:alice@example.test", "alice", alicePW, "sip:bob@example.test")
	var routes []sip.Header
	for _, h := range sess.InviteResponse.GetHeaders("Record-Route") {
		routes = append([]sip.Header{sip.NewHeader("Route", h.Value())}, routes...)
	}
	if len(routes) == 0 {
		t.Fatal("no Record-Route on the 200")
	}
	carolContact := "sip:carol@127.0.0.1:7300;transport=tls"
	// Without credentials, a spoofed sender, alice's Route: to carol's
	// contact, and to carol's address of record.
	for _, to := range []string{carolContact, "sip:carol@example.test"} {
		res := alice.UA.Message("sip:bob@example.test", "", "", to, "spoofed with a route token", routes...)
		if res.StatusCode < 400 {
			t.Errorf("MESSAGE to %s with a Route token and no credentials: %d", to, res.StatusCode)
		}
	}
	// The same as if in a dialog (a To tag), in another Call-ID.
	res := alice.UA.Forged(sip.MESSAGE, "sip:bob@example.test", carolContact, "fake-tag", "", "in a dialog that is not there", routes...)
	if res.StatusCode < 400 {
		t.Errorf("MESSAGE with a To tag and a Route token from another dialog: %d", res.StatusCode)
	}
	// In the token's own Call-ID, but to carol.
	res = alice.UA.Forged(sip.MESSAGE, "sip:bob@example.test", carolContact, "fake-tag", sess.InviteRequest.CallID().Value(), "in alice's dialog, to carol", routes...)
	if res.StatusCode < 400 {
		t.Errorf("MESSAGE in the token's Call-ID to another user's contact: %d", res.StatusCode)
	}
	// A re-INVITE to carol in a dialog that is not there.
	res = alice.UA.Forged(sip.INVITE, "sip:bob@example.test", carolContact, "fake-tag", "", "", append(routes, sip.NewHeader("Contact", "<sip:alice@127.0.0.1:7100;transport=tls>"))...)
	if res.StatusCode < 400 || carol.Invites.Load()+carol.ReInvites.Load() != 0 {
		t.Errorf("re-INVITE to carol with a Route token from another dialog: %d (carol saw %d INVITEs)", res.StatusCode, carol.Invites.Load()+carol.ReInvites.Load())
	}
	time.Sleep(200 * time.Millisecond)
	if n := len(carol.UA.WaitMessages(0, 0)); n != 0 {
		t.Fatalf("carol received %d messages sent with someone else's Route token", n)
	}
	// The dialog itself: INFO both ways, then the hang-up.
	if res, err := siptest.InDialog(ctx, sess, nil, sip.INFO); err != nil || res.StatusCode != 200 {
		t.Fatalf("INFO in the dialog: %v %v", res, err)
	}
	if err := sess.Bye(ctx); err != nil {
		t.Fatal(err)
	}
	siptest.Eventually(t, "bob gets the BYE", func() bool { return bob.Byes.Load() == 1 })
}

// Requests in a dialog go to the registered contact of one of its parties,
// even when another user has registered the same contact URI: alice
// registering bob's contact must not receive bob's calls' requests (the
// contact was looked up among every user's bindings, and alice's came
// first), nor stop them reaching bob.
func TestInDialogContactOfTheParties(t *testing.T) {
	s, roots := users(t, "sip:alice@example.test", "sip:bob@example.test", "sip:carol@example.test")
	alice := siptest.NewPhone(siptest.New(t, s.UsersAddr(), roots), "sip:alice@127.0.0.1:7100;transport=tls", true)
	if res := alice.Register("sip:alice@example.test", "alice", alicePW, "<sip:bob@127.0.0.1:7200;transport=tls>"); res.StatusCode != 200 {
		t.Fatalf("alice registers bob's contact: %d", res.StatusCode)
	}
	bob := registeredPhone(t, s.UsersAddr(), roots, "sip:bob@example.test", "bob", "7200", true)
	carol := registeredPhone(t, s.UsersAddr(), roots, "sip:carol@example.test", "carol", "7300", true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess := carol.CallAcked(ctx, t, bob, "sip:carol@example.test", "carol", alicePW, "sip:bob@example.test")
	for _, m := range []sip.RequestMethod{sip.INFO, sip.UPDATE} {
		if res, err := siptest.InDialog(ctx, sess, nil, m); err != nil || res.StatusCode != 200 {
			t.Fatalf("%s to bob in the call: %v %v", m, res, err)
		}
	}
	if err := sess.Bye(ctx); err != nil {
		t.Fatal(err)
	}
	siptest.Eventually(t, "bob gets the BYE", func() bool { return bob.Byes.Load() == 1 })
	if n := bob.Others.Load(); n != 2 {
		t.Fatalf("bob got %d of the call's INFO and UPDATE", n)
	}
	if n := alice.Others.Load() + alice.Byes.Load() + alice.Acks.Load(); n != 0 {
		t.Fatalf("alice got %d requests of bob's call", n)
	}
}

// A client that has the core as its outbound proxy puts a Route naming it
// on requests outside a dialog: it is removed and the request is
// authenticated and routed like any other (it was refused 403). A Route
// naming anything else is refused.
func TestOutboundProxyRoute(t *testing.T) {
	s, roots := users(t, "sip:alice@example.test", "sip:bob@example.test")
	alice := registeredPhone(t, s.UsersAddr(), roots, "sip:alice@example.test", "alice", "7100", true)
	bob := registeredPhone(t, s.UsersAddr(), roots, "sip:bob@example.test", "bob", "7200", true)
	us := "<sip:" + s.UsersAddr() + ";transport=tls;lr>"
	if res := alice.UA.Message("sip:alice@example.test", "alice", alicePW, "sip:bob@example.test", "via the core", sip.NewHeader("Route", us)); res.StatusCode != 200 {
		t.Fatalf("IM with a Route naming the core: %d %s", res.StatusCode, res.Reason)
	}
	if n := len(bob.UA.WaitMessages(1, 5*time.Second)); n != 1 {
		t.Fatalf("bob got %d IMs", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := alice.CallWith(ctx, "sip:alice@example.test", "alice", alicePW, "sip:bob@example.test", sip.NewHeader("Route", us))
	if err != nil || sess.InviteResponse.StatusCode != 200 {
		t.Fatalf("call with the core as outbound proxy: %v", err)
	}
	if err := sess.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	// The ACK follows the dialog's route. (The hang-up is left out: with a
	// Route on its INVITE, the test client's sipgo dialog sends its BYE over
	// UDP, and does not answer the callee's, which the core forwards to its
	// flow.)
	siptest.Eventually(t, "bob gets the ACK", func() bool { return bob.Acks.Load() == 1 })
	// A second Route, to somewhere else (the client sends to the first).
	if res := alice.UA.Message("sip:alice@example.test", "alice", alicePW, "sip:bob@example.test", "elsewhere", sip.NewHeader("Route", us), sip.NewHeader("Route", "<sip:127.0.0.2:5061;transport=tls;lr>")); res.StatusCode != 403 {
		t.Fatalf("IM with a Route elsewhere: %d, want 403", res.StatusCode)
	}
	if n := len(bob.UA.WaitMessages(2, 300*time.Millisecond)); n != 1 {
		t.Fatalf("bob got %d IMs", n)
	}
}
