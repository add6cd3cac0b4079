package edge_test

import (
	"context"
	"crypto/tls"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"

	"portcullis/core"
	"portcullis/edge"
	"portcullis/internal/sipclient"
	"portcullis/internal/siptest"
)

// Calls with a remote user survive a break in the edge's link to the
// core: after the edge has connected again (from a new port), each party's
// BYE still reaches the other, whoever called.
func TestAccessEdgeDialogSurvivesLinkBreak(t *testing.T) {
	e := newEnv(t)
	var relay *siptest.Pipe // a network blip between edge and core: Cut
	c, ed := e.startAccess(func(cfg *edge.Config) {
		relay = siptest.NewPipe(t, cfg.Core.Address)
		cfg.Core.Address = relay.Addr()
	})
	_, alice, bob := e.phones(c, ed) // alice remote, bob inside
	_, edgeOps := ed.Addr()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, dir := range bothWays(alice, bob) {
		for _, callerHangsUp := range []bool{true, false} {
			sess := dir.caller.CallAcked(ctx, t, dir.callee, dir.from, dir.user, pw, dir.to)

			relay.Cut()
			time.Sleep(300 * time.Millisecond) // the edge notices and connects again
			waitReadyz(t, edgeOps, 200)

			hangUp(ctx, t, dir, sess, callerHangsUp) // after the link broke
		}
	}
}

// Calls with a remote user survive a restart of the core: the core signs
// its Record-Routes with a key kept in its store, and a party's BYE after
// the restart (the internal user registered again, the edge linked again)
// reaches the other.
func TestAccessEdgeDialogSurvivesCoreRestart(t *testing.T) {
	e := newEnv(t)
	c, ed := e.startAccess()
	_, alice, bob := e.phones(c, ed) // alice remote, bob inside
	_, edgeOps := ed.Addr()
	coreAddr, _ := c.Addr()
	usersAddr := c.UsersAddr()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	in, out := callBothWays(ctx, t, alice, bob)

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	cc := e.coreConfig(coreAddr, "edge1.internal")
	cc.SIP.UsersListen = usersAddr
	c2 := e.startCore(cc)
	t.Cleanup(func() { c2.Close() })
	time.Sleep(300 * time.Millisecond) // the edge notices and links again
	waitReadyz(t, edgeOps, 200)
	if res := bob.Register("sip:bob@example.test", "bob", pw, "<sip:bob@203.0.113.20:5061;transport=tls>"); res.StatusCode != 200 {
		t.Fatalf("bob registers again: %d", res.StatusCode)
	}

	hangUpBothWays(ctx, t, "core", in, out, alice, bob)
}

// A remote user's phone that loses its connection mid-call (a roaming
// phone) connects and registers again: requests in the call reach it over
// the new connection. Someone else registering that contact under their
// own AOR does not get them.
func TestAccessEdgeDialogFollowsReconnectedUser(t *testing.T) {
	e := newEnv(t)
	c, ed := e.startAccess()
	roots := accessRoots(t, e)
	_, alice, bob := e.phones(c, ed) // alice remote, bob inside
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const contact = "sip:alice@198.51.100.7:5061;transport=tls"
	conf := &tls.Config{RootCAs: roots, ServerName: "sip.example.test", MinVersion: tls.VersionTLS12}
	call := func(callee *siptest.Phone) *sipgo.DialogClientSession {
		t.Helper()
		return bob.CallAcked(ctx, t, callee, "sip:bob@example.test", "bob", pw, "sip:alice@example.test")
	}

	// carol registers alice's contact under her own AOR: no effect.
	sess := call(alice)
	alice.UA.UA.Close()
	carol := siptest.NewPhone(siptest.New(t, ed.ExternalAddr(), conf), contact, true)
	if res := carol.Register("sip:carol@example.test", "carol", pw, "<"+contact+">"); res.StatusCode != 200 {
		t.Fatalf("carol registers: %d", res.StatusCode)
	}
	if err := sess.Bye(ctx); err == nil || !strings.Contains(err.Error(), "480 Temporarily Unavailable (flow failed)") {
		t.Fatalf("BYE to alice's lost connection: %v, want 480 (flow failed)", err)
	}
	if n := carol.Byes.Load(); n != 0 {
		t.Fatalf("carol got alice's BYE")
	}

	// alice connects and registers again: the next call's requests follow.
	alice2 := siptest.NewPhone(siptest.New(t, ed.ExternalAddr(), conf), contact, true)
	if res := alice2.Register("sip:alice@example.test", "alice", pw, "<"+contact+">"); res.StatusCode != 200 {
		t.Fatalf("alice registers again: %d", res.StatusCode)
	}
	sess = call(alice2)
	alice2.UA.UA.Close()
	alice3 := siptest.NewPhone(siptest.New(t, ed.ExternalAddr(), conf), contact, true)
	if res := alice3.Register("sip:alice@example.test", "alice", pw, "<"+contact+">"); res.StatusCode != 200 {
		t.Fatalf("alice registers over a third connection: %d", res.StatusCode)
	}
	_ = sess.Bye(ctx) // alice3's phone does not know the call (481): the BYE reaching it is the point
	siptest.Eventually(t, "bob's BYE reaches alice over her new connection", func() bool { return alice3.Byes.Load() == 1 })
}

// After an edge restart, a Path or Route the previous edge process signed
// cannot be opened: the edge answers the core 430 (the flow is gone), so
// the core drops the binding of a remote user who has not come back (the
// caller is told 480), and the next request gets 480 at once.
func TestEdgeRestartDropsStaleBindings(t *testing.T) {
	e := newEnv(t)
	var ec edge.Config
	c, ed := e.startAccess(func(cfg *edge.Config) { ec = *cfg })
	roots := accessRoots(t, e)
	remote := siptest.New(t, ed.ExternalAddr(), &tls.Config{RootCAs: roots, ServerName: "sip.example.test", MinVersion: tls.VersionTLS12})
	if res := remote.Register("sip:alice@example.test", "alice", pw, "<sip:alice@198.51.100.7:5061;transport=tls>"); res.StatusCode != 200 {
		t.Fatalf("alice registers: %d", res.StatusCode)
	}
	remote.UA.Close()
	restartEdge(t, ed, ec)
	inside := siptest.New(t, c.UsersAddr(), &tls.Config{RootCAs: roots, ServerName: "core1.internal", MinVersion: tls.VersionTLS12})
	if res := inside.Register("sip:bob@example.test", "bob", pw, "<sip:bob@203.0.113.20:5061;transport=tls>"); res.StatusCode != 200 {
		t.Fatalf("bob registers: %d", res.StatusCode)
	}
	if res := inside.Message("sip:bob@example.test", "bob", pw, "sip:alice@example.test", "still there?"); res.StatusCode != 480 || !strings.Contains(res.Reason, "flow failed") {
		t.Fatalf("MESSAGE over a Path from before the restart: %d %s, want 480 (the edge's 430)", res.StatusCode, res.Reason)
	}
	if res := inside.Message("sip:bob@example.test", "bob", pw, "sip:alice@example.test", "again"); res.StatusCode != 480 {
		t.Fatalf("MESSAGE once the binding is dropped: %d, want 480", res.StatusCode)
	}
}

// With internal.route_key_file, calls through the edge go on across its
// restart: once the remote user has connected and registered again, each
// party's BYE reaches the other.
func TestAccessEdgeDialogSurvivesEdgeRestart(t *testing.T) {
	e := newEnv(t)
	c, ed, ec := e.startRestartable()
	_, alice, bob := e.phones(c, ed) // alice remote, bob inside
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	in, out := callBothWays(ctx, t, alice, bob)

	restartEdge(t, ed, ec)
	if res := alice.Register("sip:alice@example.test", "alice", pw, "<sip:alice@198.51.100.7:5061;transport=tls>"); res.StatusCode != 200 {
		t.Fatalf("alice registers again: %d", res.StatusCode)
	}

	hangUpBothWays(ctx, t, "edge", in, out, alice, bob)
}

// callBothWays has remote alice call internal bob (in) and bob call alice
// (out), both answered and ACKed.
func callBothWays(ctx context.Context, t *testing.T, alice, bob *siptest.Phone) (in, out *sipgo.DialogClientSession) {
	t.Helper()
	in = alice.CallAcked(ctx, t, bob, "sip:alice@example.test", "alice", pw, "sip:bob@example.test")
	out = bob.CallAcked(ctx, t, alice, "sip:bob@example.test", "bob", pw, "sip:alice@example.test")
	return in, out
}

// hangUpBothWays has each caller of callBothWays hang up after what
// restarted, and checks the BYE reaches the other party.
func hangUpBothWays(ctx context.Context, t *testing.T, what string, in, out *sipgo.DialogClientSession, alice, bob *siptest.Phone) {
	t.Helper()
	if err := in.Bye(ctx); err != nil {
		t.Fatalf("the remote caller's BYE after the %s restarted: %v", what, err)
	}
	siptest.Eventually(t, "bob gets alice's BYE", func() bool { return bob.Byes.Load() == 1 })
	if err := out.Bye(ctx); err != nil {
		t.Fatalf("the internal caller's BYE after the %s restarted: %v", what, err)
	}
	siptest.Eventually(t, "alice gets bob's BYE", func() bool { return alice.Byes.Load() == 1 })
}

// startRestartable is startAccess with the edge's route key in a file (so
// that its tokens hold across restartEdge), and the edge's config.
func (e *env) startRestartable() (*core.Server, *edge.Server, edge.Config) {
	e.t.Helper()
	var ec edge.Config
	c, ed := e.startAccess(func(cfg *edge.Config) {
		cfg.Internal.RouteKeyFile = filepath.Join(e.t.TempDir(), "edge-route.key")
		ec = *cfg
	})
	return c, ed, ec
}

// restartEdge closes ed and starts an edge with ec (the config ed was
// started with) on ed's listening addresses, and waits until it is ready.
func restartEdge(t *testing.T, ed *edge.Server, ec edge.Config) {
	t.Helper()
	_, ops := respawnEdge(t, ed, ec).Addr()
	waitReadyz(t, ops, 200)
}

// respawnEdge is restartEdge without the wait (the core may be down).
func respawnEdge(t *testing.T, ed *edge.Server, ec edge.Config) *edge.Server {
	t.Helper()
	internal, _ := ed.Addr()
	ec.Internal.Listen, ec.External.Listen = internal, ed.ExternalAddr()
	if err := ed.Close(); err != nil {
		t.Fatal(err)
	}
	ed2, err := edge.Start(ec, deps(t, "edge"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ed2.Close() })
	return ed2
}

// A listening remote client registers again as soon as its connection
// goes (RFC 5626 §4.4), here with an edge restart: it waited for its
// next refresh, nine minutes, and IMs to it got 480 until then.
func TestListenerRegistersAgainAfterEdgeRestart(t *testing.T) {
	e := newEnv(t)
	c, ed, ec := e.startRestartable()
	got, listening := listenAsAlice(t, e, ed)
	bob := siptest.New(t, c.UsersAddr(), &tls.Config{RootCAs: accessRoots(t, e), ServerName: "core1.internal", MinVersion: tls.VersionTLS12})
	waitBinding(t, c, "sip:alice@example.test")

	restartEdge(t, ed, ec)
	siptest.Eventually(t, "an IM reaches alice after the edge restarted", func() bool {
		return bob.Message("sip:bob@example.test", "bob", pw, "sip:alice@example.test", "back?").StatusCode == 200
	})
	select {
	case text := <-got:
		if text != "back?" {
			t.Fatalf("got %q", text)
		}
	case err := <-listening:
		t.Fatalf("Listen ended: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the IM did not arrive")
	}
}

// A listening client whose connection went while the core was down gets
// 503 from the edge for its REGISTER (the next hop is out of reach): it
// tries again until the core is back, and then receives IMs. A 5xx ended
// Listen, so a core restart could stop remote users' clients for good.
func TestListenerWaitsOutCoreRestart(t *testing.T) {
	e := newEnv(t)
	c, ed, ec := e.startRestartable()
	coreAddr, _ := c.Addr()
	usersAddr := c.UsersAddr()
	got, listening := listenAsAlice(t, e, ed)
	waitBinding(t, c, "sip:alice@example.test")

	// The core goes, then the edge restarts (alice's connection goes): her
	// REGISTERs get 503 until the core is back.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	respawnEdge(t, ed, ec)
	time.Sleep(1500 * time.Millisecond) // a REGISTER or two answered 503
	select {
	case err := <-listening:
		t.Fatalf("Listen ended while the core was down: %v", err)
	default:
	}
	cc := e.coreConfig(coreAddr, "edge1.internal")
	cc.SIP.UsersListen = usersAddr
	c2 := e.startCore(cc)
	t.Cleanup(func() { c2.Close() })
	bob := siptest.New(t, c2.UsersAddr(), &tls.Config{RootCAs: accessRoots(t, e), ServerName: "core1.internal", MinVersion: tls.VersionTLS12})
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if bob.Message("sip:bob@example.test", "bob", pw, "sip:alice@example.test", "back?").StatusCode == 200 {
			break
		}
		select {
		case err := <-listening:
			t.Fatalf("Listen ended: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("no IM reached alice after the core came back")
		}
	}
	if text := <-got; text != "back?" {
		t.Fatalf("got %q", text)
	}
}

// listenAsAlice runs `portcullis client listen`'s client as remote alice
// through ed until the test ends: the IMs she gets, and Listen's end.
func listenAsAlice(t *testing.T, e *env, ed *edge.Server) (got chan string, listening chan error) {
	t.Helper()
	cl, err := sipclient.New(sipclient.Options{Server: ed.ExternalAddr(), ServerName: "sip.example.test", CAFile: e.pki.CAFile(),
		AOR: "sip:alice@example.test", Password: pw})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	got, listening = make(chan string, 10), make(chan error, 1)
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		listening <- cl.Listen(ctx, func(im sipclient.IM) { got <- im.Text })
	}()
	// Closed first, the client does not wait to unregister from servers
	// the test has closed.
	t.Cleanup(func() { cl.Close(); cancel(); <-ended })
	return got, listening
}

// waitBinding waits until aor has one binding at c.
func waitBinding(t *testing.T, c *core.Server, aor string) {
	t.Helper()
	siptest.Eventually(t, aor+" registers", func() bool {
		bs, _ := c.Store().Bindings(context.Background(), aor, time.Now())
		return len(bs) == 1
	})
}
