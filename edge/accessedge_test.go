package edge_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"portcullis/access"
	"portcullis/access/accesstest"
	"portcullis/core"
	"portcullis/edge"
	"portcullis/internal/siptest"
	"portcullis/internal/turntest"
)

const pw = "correct horse battery"

// startAccess starts a core (users listener, registrar for example.test,
// users alice, bob and carol) and an edge with an Access Edge in front of
// it.
func (e *env) startAccess(tune ...func(*edge.Config)) (*core.Server, *edge.Server) {
	e.t.Helper()
	c := e.accessCore("edge1.internal")
	return c, e.accessEdge(c, "edge1.internal", tune...)
}

// accessCore starts startAccess's core, trusting the edges named.
func (e *env) accessCore(edges ...string) *core.Server {
	e.t.Helper()
	cc := e.coreConfig("127.0.0.1:0", edges...)
	cc.SIP.UsersListen = "127.0.0.1:0"
	c := e.startCore(cc)
	e.t.Cleanup(func() { c.Close() })
	for _, aor := range []string{"sip:alice@example.test", "sip:bob@example.test", "sip:carol@example.test"} {
		if err := core.AddUser(context.Background(), c.Store(), aor, pw); err != nil {
			e.t.Fatal(err)
		}
	}
	return c
}

// accessEdge starts an edge named name (its internal certificate) in
// front of c, and waits until it is linked.
func (e *env) accessEdge(c *core.Server, name string, tune ...func(*edge.Config)) *edge.Server {
	e.t.Helper()
	coreAddr, _ := c.Addr()
	public := e.publicCert()
	ec := edge.DefaultConfig()
	ec.Metrics.Listen, ec.Internal.Listen = "127.0.0.1:0", "127.0.0.1:0"
	ec.Internal.Hostname = name
	ec.Internal.TrustedCores = []string{"core1.internal"}
	ec.TLS = e.nodeFiles(name)
	ec.Core = edge.LinkConfig{Address: coreAddr, ServerName: "core1.internal", KeepaliveInterval: 100 * time.Millisecond,
		KeepaliveTimeout: 500 * time.Millisecond, ReconnectMin: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond}
	ec.External.Listen = "127.0.0.1:0"
	ec.External.TLSCertFile, ec.External.TLSKeyFile = public.CertFile, public.KeyFile
	ec.External.HomeDomains = []string{"example.test"}
	for _, f := range tune {
		f(&ec)
	}
	ed, err := edge.Start(ec, deps(e.t, strings.TrimSuffix(name, ".internal")))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { ed.Close() })
	_, edgeOps := ed.Addr()
	waitReadyz(e.t, edgeOps, 200)
	return ed
}

// publicCert is the edges' public certificate (sip.example.test), issued
// once.
func (e *env) publicCert() access.TLSFiles {
	f := access.TLSFiles{CAFile: e.pki.CAFile(), CertFile: access.CertPath(e.pki.Dir, "sip.example.test"), KeyFile: access.KeyPath(e.pki.Dir, "sip.example.test")}
	if _, err := access.LoadMaterial(f); err == nil {
		return f
	}
	return e.pki.Issue(e.t, access.IssueRequest{Name: "sip.example.test", SANs: []string{"sip.example.test", "127.0.0.1"}, Usage: access.UsageServer})
}

// Two edges in front of one core (an operator's second edge): a remote
// user on each calls the other, each way, and either hangs up; IM crosses
// both. The core reaches each user through the edge they registered at.
func TestTwoEdgesOneCore(t *testing.T) {
	e := newEnv(t)
	c := e.accessCore("edge1.internal", "edge2.internal")
	ed1, ed2 := e.accessEdge(c, "edge1.internal"), e.accessEdge(c, "edge2.internal")
	roots := accessRoots(t, e)
	remote := func(ed *edge.Server, user, contact string) *siptest.Phone {
		t.Helper()
		ua := siptest.New(t, ed.ExternalAddr(), &tls.Config{RootCAs: roots, ServerName: "sip.example.test", MinVersion: tls.VersionTLS12})
		if res := ua.Register("sip:"+user+"@example.test", user, pw, "<"+contact+">"); res.StatusCode != 200 {
			t.Fatalf("%s registers at an edge: %d", user, res.StatusCode)
		}
		return siptest.NewPhone(ua, contact, true)
	}
	alice := remote(ed1, "alice", "sip:alice@198.51.100.7:5061;transport=tls")
	carol := remote(ed2, "carol", "sip:carol@198.51.100.8:5061;transport=tls")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for _, dir := range []direction{
		{alice, carol, "sip:alice@example.test", "alice", "sip:carol@example.test"},
		{carol, alice, "sip:carol@example.test", "carol", "sip:alice@example.test"},
	} {
		if res := dir.caller.Message(dir.from, dir.user, pw, dir.to, "hi from "+dir.user); res.StatusCode != 200 {
			t.Fatalf("IM from %s: %d", dir.user, res.StatusCode)
		}
		for _, callerHangsUp := range []bool{true, false} {
			sess := dir.caller.CallAcked(ctx, t, dir.callee, dir.from, dir.user, pw, dir.to)
			if res, err := siptest.ReInvite(ctx, nil, dir.callee.Incoming()); err != nil || res.StatusCode != 200 {
				t.Fatalf("re-INVITE from %s's callee: %v %v", dir.user, res, err)
			}
			hangUp(ctx, t, dir, sess, callerHangsUp)
		}
	}
	if n := len(alice.WaitMessages(1, 5*time.Second)) + len(carol.WaitMessages(1, 5*time.Second)); n != 2 {
		t.Fatalf("%d IMs arrived, want 2", n)
	}
}

func TestAccessEdgeRemoteUserIM(t *testing.T) {
	e := newEnv(t)
	c, ed := e.startAccess()
	roots := accessRoots(t, e)
	remote := siptest.New(t, ed.ExternalAddr(), &tls.Config{RootCAs: roots, ServerName: "sip.example.test", MinVersion: tls.VersionTLS12})
	inside := siptest.New(t, c.UsersAddr(), &tls.Config{RootCAs: roots, ServerName: "core1.internal", MinVersion: tls.VersionTLS12})

	// The remote user registers through the edge: the core challenges.
	if res := remote.Register("sip:alice@example.test", "alice", "", "<sip:alice@198.51.100.7:5061;transport=tls>"); res.StatusCode != 401 {
		t.Fatalf("unauthenticated REGISTER through the edge: %d (the edge must not authenticate, the core challenges)", res.StatusCode)
	}
	res, _ := remote.RegisterWith("sip:alice@example.test", "alice", pw, []string{"<sip:alice@198.51.100.7:5061;transport=tls>"},
		sip.NewHeader("Path", "<sip:evil@203.0.113.99:5061;lr>"))
	if res.StatusCode != 200 {
		t.Fatalf("REGISTER through the edge: %d %s", res.StatusCode, res.Reason)
	}
	bs, err := c.Store().Bindings(context.Background(), "sip:alice@example.test", time.Now())
	if err != nil || len(bs) != 1 || strings.Contains(bs[0].Path, "evil") || strings.Count(bs[0].Path, "sip:") != 1 {
		t.Fatalf("stored Path %+v %v: want only the edge's", bs, err)
	}
	if res := inside.Register("sip:bob@example.test", "bob", pw, "<sip:bob@203.0.113.20:5061;transport=tls>"); res.StatusCode != 200 {
		t.Fatalf("inside REGISTER: %d", res.StatusCode)
	}

	// Remote → inside, with a forged trust header that must not get in.
	forged := sip.NewHeader("MS-Edge-Proxy-Message-Trust", "ms-source-type=AuthorizedServer")
	if res := remote.Message("sip:alice@example.test", "alice", pw, "sip:bob@example.test", "hello from outside", forged); res.StatusCode != 200 {
		t.Fatalf("IM in: %d %s", res.StatusCode, res.Reason)
	}
	got := inside.WaitMessages(1, 5*time.Second)
	if len(got) != 1 || string(got[0].Body()) != "hello from outside" {
		t.Fatalf("bob got %d", len(got))
	}
	var trust []string
	for _, h := range got[0].Headers() {
		if strings.EqualFold(h.Name(), access.TrustHeader) {
			trust = append(trust, h.Value())
		}
	}
	if len(trust) != 1 || !strings.HasPrefix(trust[0], "ms-source-type=InternetUser") {
		t.Fatalf("trust headers at bob: %q", trust)
	}

	// Inside → remote: through the core, the Path, the edge and alice's own connection.
	if res := inside.Message("sip:bob@example.test", "bob", pw, "sip:alice@example.test", "hello from inside"); res.StatusCode != 200 {
		t.Fatalf("IM out: %d %s", res.StatusCode, res.Reason)
	}
	out := remote.WaitMessages(1, 5*time.Second)
	if len(out) != 1 || string(out[0].Body()) != "hello from inside" {
		t.Fatalf("alice got %d", len(out))
	}
	// Topology hiding: alice sees only the edge's Via, no internal hop.
	if vias := out[0].GetHeaders("Via"); len(vias) != 1 {
		t.Fatalf("alice sees %d Vias: %v", len(vias), vias)
	}
	for _, h := range out[0].Headers() {
		if strings.EqualFold(h.Name(), access.TrustHeader) {
			t.Fatal("the trust header left the edge")
		}
	}

	// No open relay; a method off the allow list.
	if res := remote.Message("sip:alice@example.test", "alice", pw, "sip:someone@elsewhere.test", "x"); res.StatusCode != 403 {
		t.Fatalf("foreign domain: %d", res.StatusCode)
	}
	if res := remote.Request("PUBLISH", "sip:alice@example.test", "sip:alice@example.test"); res.StatusCode != 405 || res.GetHeader("Allow") == nil {
		t.Fatalf("PUBLISH: %d", res.StatusCode)
	}
}

func accessRoots(t *testing.T, e *env) *x509.CertPool {
	return accesstest.Material(t, e.nodeFiles("probe.internal")).Roots
}

// phones registers alice as a remote user (through the edge) and bob as an
// internal one (on the core's users' listener), each with a phone.
// direction is who calls whom: the caller's URI and username, the
// callee's URI.
type direction struct {
	caller, callee *siptest.Phone
	from, user, to string
}

// bothWays are the two directions of a call between remote alice and
// internal bob (as e.phones makes them).
func bothWays(alice, bob *siptest.Phone) []direction {
	return []direction{
		{alice, bob, "sip:alice@example.test", "alice", "sip:bob@example.test"}, // remote calls inside
		{bob, alice, "sip:bob@example.test", "bob", "sip:alice@example.test"},   // inside calls remote
	}
}

// hangUp ends sess, a call dir's caller placed, from the caller or from
// the callee, and checks the other party gets the BYE.
func hangUp(ctx context.Context, t *testing.T, dir direction, sess *sipgo.DialogClientSession, callerHangsUp bool) {
	t.Helper()
	hearer, bye := dir.callee, func() error { return sess.Bye(ctx) }
	if !callerHangsUp {
		hearer, bye = dir.caller, func() error { return dir.callee.Incoming().Bye(ctx) }
	}
	byes := hearer.Byes.Load()
	if err := bye(); err != nil {
		t.Fatalf("%s's call (the caller hangs up: %v): BYE: %v", dir.user, callerHangsUp, err)
	}
	siptest.Eventually(t, "the other party gets the BYE", func() bool { return hearer.Byes.Load() == byes+1 })
}

func (e *env) phones(c *core.Server, ed *edge.Server) (remoteUA *siptest.UA, alice, bob *siptest.Phone) {
	e.t.Helper()
	return e.phonesVia(ed.ExternalAddr(), c.UsersAddr())
}

// phonesVia is phones with alice connecting to remote (the edge's
// external listener, or a siptest.Pipe to it) and bob to inside (the
// core's users listener, or a pipe to it).
func (e *env) phonesVia(remote, inside string) (remoteUA *siptest.UA, alice, bob *siptest.Phone) {
	t := e.t
	t.Helper()
	roots := accessRoots(t, e)
	remoteUA = siptest.New(t, remote, &tls.Config{RootCAs: roots, ServerName: "sip.example.test", MinVersion: tls.VersionTLS12})
	insideUA := siptest.New(t, inside, &tls.Config{RootCAs: roots, ServerName: "core1.internal", MinVersion: tls.VersionTLS12})
	alice = siptest.NewPhone(remoteUA, "sip:alice@198.51.100.7:5061;transport=tls", true)
	bob = siptest.NewPhone(insideUA, "sip:bob@203.0.113.20:5061;transport=tls", true)
	if res := remoteUA.Register("sip:alice@example.test", "alice", pw, "<sip:alice@198.51.100.7:5061;transport=tls>"); res.StatusCode != 200 {
		t.Fatalf("alice: %d", res.StatusCode)
	}
	if res := insideUA.Register("sip:bob@example.test", "bob", pw, "<sip:bob@203.0.113.20:5061;transport=tls>"); res.StatusCode != 200 {
		t.Fatalf("bob: %d", res.StatusCode)
	}
	return remoteUA, alice, bob
}

func TestAccessEdgeCalls(t *testing.T) {
	e := newEnv(t)
	c, ed := e.startAccess()
	roots := accessRoots(t, e)
	remoteUA, alice, bob := e.phones(c, ed)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()

	// A remote user calls an internal one through the edge and hangs up.
	sess, err := alice.Call(ctx, "sip:alice@example.test", "alice", pw, "sip:bob@example.test")
	if err != nil || sess.InviteResponse.StatusCode != 200 {
		t.Fatalf("call in: %v", err)
	}
	rrs := sess.InviteResponse.GetHeaders("Record-Route")
	if len(rrs) != 1 || !strings.Contains(rrs[0].Value(), ed.ExternalAddr()) {
		t.Fatalf("the remote caller sees the route set %v (want the edge's external URI only)", rrs)
	}
	if err := sess.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	siptest.Eventually(t, "bob gets the ACK", func() bool { return bob.Acks.Load() == 1 })
	// UPDATE, INFO and PRACK in the dialog (PRACK only as routing goes: the
	// phones do not send reliable provisional responses), both ways through
	// the edge and the core; INFO and OPTIONS out of dialog, authenticated
	// by the core.
	for _, m := range []sip.RequestMethod{sip.UPDATE, sip.INFO, sip.PRACK} {
		if res, err := siptest.InDialog(ctx, sess, nil, m); err != nil || res.StatusCode != 200 {
			t.Fatalf("%s in dialog from the remote caller: %v %v", m, res, err)
		}
		if res, err := siptest.InDialog(ctx, nil, bob.Incoming(), m); err != nil || res.StatusCode != 200 {
			t.Fatalf("%s in dialog from the internal callee: %v %v", m, res, err)
		}
	}
	// A re-INVITE (hold, resume) each way, answered and ACKed across the
	// edge and the core.
	if res, err := siptest.ReInvite(ctx, sess, nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("re-INVITE from the remote caller: %v %v", res, err)
	}
	siptest.Eventually(t, "bob gets the re-INVITE's ACK", func() bool { return bob.ReInvites.Load() == 1 && bob.Acks.Load() == 2 })
	if res, err := siptest.ReInvite(ctx, nil, bob.Incoming()); err != nil || res.StatusCode != 200 {
		t.Fatalf("re-INVITE from the internal callee: %v %v", res, err)
	}
	siptest.Eventually(t, "alice gets the re-INVITE's ACK", func() bool { return alice.ReInvites.Load() == 1 && alice.Acks.Load() == 1 })
	if bob.Others.Load() != 3 || alice.Others.Load() != 3 {
		t.Fatalf("in-dialog requests received: bob %d, alice %d (want 3 each)", bob.Others.Load(), alice.Others.Load())
	}
	for _, m := range []sip.RequestMethod{sip.INFO, sip.OPTIONS} {
		if res := remoteUA.RequestAuth(m, "sip:alice@example.test", "alice", pw, "sip:bob@example.test"); res.StatusCode != 200 {
			t.Fatalf("%s out of dialog from the remote user: %d", m, res.StatusCode)
		}
	}
	if bob.Others.Load() != 5 {
		t.Fatalf("bob received %d requests, want 5", bob.Others.Load())
	}
	if err := sess.Bye(ctx); err != nil {
		t.Fatalf("BYE from the remote caller: %v", err)
	}
	siptest.Eventually(t, "bob gets the BYE", func() bool { return bob.Byes.Load() == 1 })

	// A remote user calls an internal one, and the internal callee hangs up
	// (the core double-record-routes: bob reaches it on the users'
	// listener, the edge on the MTLS one).
	sessB, err := alice.Call(ctx, "sip:alice@example.test", "alice", pw, "sip:bob@example.test")
	if err != nil || sessB.InviteResponse.StatusCode != 200 {
		t.Fatalf("second call in: %v", err)
	}
	if err := sessB.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	siptest.Eventually(t, "bob gets the second ACK", func() bool { return bob.Acks.Load() == 3 })
	if err := bob.Incoming().Bye(ctx); err != nil {
		t.Fatalf("BYE from the internal callee: %v", err)
	}
	siptest.Eventually(t, "alice gets bob's BYE", func() bool { return alice.Byes.Load() == 1 })

	// An internal user calls the remote one; the remote callee hangs up.
	sess2, err := bob.Call(ctx, "sip:bob@example.test", "bob", pw, "sip:alice@example.test")
	if err != nil || sess2.InviteResponse.StatusCode != 200 {
		t.Fatalf("call out: %v", err)
	}
	inv := alice.LastInvite.Load()
	if vias := inv.GetHeaders("Via"); len(vias) != 1 {
		t.Fatalf("the remote callee sees %d Vias", len(vias))
	}
	if rr := inv.GetHeaders("Record-Route"); len(rr) != 1 || !strings.Contains(rr[0].Value(), ed.ExternalAddr()) {
		t.Fatalf("the remote callee sees the route set %v", rr)
	}
	if err := sess2.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	siptest.Eventually(t, "alice gets the ACK", func() bool { return alice.Acks.Load() == 2 })
	if err := alice.Incoming().Bye(ctx); err != nil {
		t.Fatalf("BYE from the remote callee: %v", err)
	}
	siptest.Eventually(t, "bob gets alice's BYE", func() bool { return bob.Byes.Load() == 2 })

	// Both parties remote: the edge is on the route set twice.
	carolUA := siptest.New(t, ed.ExternalAddr(), &tls.Config{RootCAs: roots, ServerName: "sip.example.test", MinVersion: tls.VersionTLS12})
	carol := siptest.NewPhone(carolUA, "sip:carol@198.51.100.8:5061;transport=tls", true)
	if res := carolUA.Register("sip:carol@example.test", "carol", pw, "<sip:carol@198.51.100.8:5061;transport=tls>"); res.StatusCode != 200 {
		t.Fatalf("carol: %d", res.StatusCode)
	}
	sess3, err := alice.Call(ctx, "sip:alice@example.test", "alice", pw, "sip:carol@example.test")
	if err != nil || sess3.InviteResponse.StatusCode != 200 {
		t.Fatalf("remote to remote: %v", err)
	}
	if err := sess3.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	siptest.Eventually(t, "carol gets the ACK", func() bool { return carol.Acks.Load() == 1 })
	if err := sess3.Bye(ctx); err != nil {
		t.Fatalf("BYE remote to remote: %v", err)
	}
	siptest.Eventually(t, "carol gets the BYE", func() bool { return carol.Byes.Load() == 1 })

	// The remote caller cancels while it rings: the ringing stops inside.
	bob.Answer = false
	rctx, rcancel := context.WithCancel(ctx)
	go func() {
		siptest.Eventually(t, "bob rings", func() bool { return bob.Invites.Load() == 3 })
		rcancel()
	}()
	if _, err := alice.Call(rctx, "sip:alice@example.test", "alice", pw, "sip:bob@example.test"); err == nil {
		t.Fatal("a cancelled call was answered")
	}
	siptest.Eventually(t, "bob's ringing is cancelled", func() bool { return bob.Cancels.Load() == 1 })
}

// A remote caller that hangs up at once sends its CANCEL straight after
// the INVITE (0-2 ms after it here), so the CANCEL can reach the edge
// before the edge knows the INVITE (481, and the caller cancels again on
// the first provisional), while the INVITE is being sent on, or just after.
// The edge must not pass it on before the core has answered the INVITE
// provisionally: sent at once, it overtook the INVITE in the core, was
// answered 481, and the callee rang on (without the wait this test fails
// most runs: 5 of 6 with the CANCEL sent at once; the race is a timing).
// However it falls, every INVITE that reaches the callee is cancelled.
func TestAccessEdgeCancelRightAfterInvite(t *testing.T) {
	e := newEnv(t)
	c, ed := e.startAccess(func(cfg *edge.Config) { // 80 calls of 4 requests at once
		cfg.External.Limits.RequestsPerSecond, cfg.External.Limits.Burst = 1000, 1000
	})
	_, alice, bob := e.phones(c, ed)
	bob.Answer = false // rings until cancelled
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 80 {
		cs, is, err := alice.CallAndCancel(ctx, "sip:alice@example.test", "alice", pw, "sip:bob@example.test", time.Duration(i)*25*time.Microsecond)
		if err != nil {
			t.Fatal(err)
		}
		if cs != 200 || is != 487 {
			t.Fatalf("call %d: CANCEL answered %d, INVITE %d; want 200 and 487", i, cs, is)
		}
	}
	// An INVITE still on its way to bob would ring on: give it time to land.
	time.Sleep(300 * time.Millisecond)
	siptest.Eventually(t, "every INVITE that reached bob is cancelled", func() bool { return bob.Cancels.Load() == bob.Invites.Load() })
}

// A callee's 200 that crosses the caller's CANCEL reaches the caller
// through the edge and the core, whoever is remote, and the caller's ACK
// and BYE reach the callee (RFC 3261 §9.1). The proxy next to the callee
// gets it either on its open branch (the CANCEL toward the callee held up)
// or after the callee's own 487 has ended that branch; every proxy
// further up gets it after the next hop's 487 ended its branch.
func TestAccessEdgeCancelCrossesAnswer(t *testing.T) {
	e := newEnv(t)
	c, ed := e.startAccess()
	remotePipe, insidePipe := siptest.NewPipe(t, ed.ExternalAddr()), siptest.NewPipe(t, c.UsersAddr())
	_, alice, bob := e.phonesVia(remotePipe.Addr(), insidePipe.Addr())
	pipes := map[*siptest.Phone]*siptest.Pipe{alice: remotePipe, bob: insidePipe}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, dir := range bothWays(alice, bob) {
		callee, pipe := dir.callee, pipes[dir.callee]
		t.Run(dir.user+" calls, branch open", func(t *testing.T) {
			acks, byes, answered := callee.Acks.Load(), callee.Byes.Load(), callee.Answered.Load()
			release := callee.HoldAnswers()
			res, bye, err := dir.caller.CallCancelCrossed(ctx, dir.from, dir.user, pw, dir.to, siptest.CrossHooks{
				Ringing: pipe.Hold, // the CANCEL waits on the way to the callee
				Cancelled: func() {
					release() // the callee answers, not having seen the CANCEL
					siptest.Eventually(t, "the callee answers", func() bool { return callee.Answered.Load() == answered+1 })
				},
				Answered: pipe.Release,
			})
			siptest.CheckCrossed(t, callee, acks, byes, res, bye, err)
		})
		t.Run(dir.user+" calls, branch ended", func(t *testing.T) {
			acks, byes := callee.Acks.Load(), callee.Byes.Load()
			release := callee.HoldAnswers()
			defer release()
			callee.CrossAnswer.Store(true) // the 200 comes after the callee's 487
			defer callee.CrossAnswer.Store(false)
			res, bye, err := dir.caller.CallCancelCrossed(ctx, dir.from, dir.user, pw, dir.to, siptest.CrossHooks{})
			siptest.CheckCrossed(t, callee, acks, byes, res, bye, err)
		})
	}
}

// RFC 3262 through the edge and the core, both directions: the callee's
// reliable 183 reaches the caller with the route set of its early dialog,
// the caller's PRACK follows that route back, and only then is the call
// answered.
func TestAccessEdgeReliableProvisionalResponses(t *testing.T) {
	e := newEnv(t)
	c, ed := e.startAccess()
	_, alice, bob := e.phones(c, ed)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for i, dir := range bothWays(alice, bob) {
		dir.callee.Reliable = true
		sess, err := dir.caller.Call(ctx, dir.from, dir.user, pw, dir.to)
		if err != nil || sess.InviteResponse.StatusCode != 200 {
			t.Fatalf("%s calls %s with a reliable 183: %v", dir.user, dir.to, err)
		}
		if n := dir.callee.Pracks.Load(); n != 1 {
			t.Fatalf("%s got %d PRACKs, want 1", dir.to, n)
		}
		if err := sess.Ack(ctx); err != nil {
			t.Fatal(err)
		}
		if err := sess.Bye(ctx); err != nil {
			t.Fatalf("BYE after a call with PRACK (%d): %v", i, err)
		}
	}
}

// Parallel forking across the edge: bob's desk (inside) answers, so the
// core cancels the branch to his mobile (a remote device, through the
// edge), and the mobile's ringing stops.
func TestAccessEdgeForkCancelsRemoteBranch(t *testing.T) {
	e := newEnv(t)
	c, ed := e.startAccess()
	_, alice, desk := e.phones(c, ed)
	mobileUA := siptest.New(t, ed.ExternalAddr(), &tls.Config{RootCAs: accessRoots(t, e), ServerName: "sip.example.test", MinVersion: tls.VersionTLS12})
	mobile := siptest.NewPhone(mobileUA, "sip:bob@198.51.100.9:5061;transport=tls", false)
	if res := mobileUA.Register("sip:bob@example.test", "bob", pw, "<sip:bob@198.51.100.9:5061;transport=tls>"); res.StatusCode != 200 {
		t.Fatalf("bob's mobile: %d", res.StatusCode)
	}
	release := desk.HoldAnswers()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	answered := make(chan error, 1)
	go func() {
		sess, err := alice.Call(ctx, "sip:alice@example.test", "alice", pw, "sip:bob@example.test")
		if err == nil {
			err = sess.Ack(ctx)
		}
		answered <- err
	}()
	siptest.Eventually(t, "both of bob's devices ring", func() bool { return desk.Invites.Load() == 1 && mobile.Invites.Load() == 1 })
	release() // the desk answers
	if err := <-answered; err != nil {
		t.Fatalf("alice's call: %v", err)
	}
	siptest.Eventually(t, "the mobile's branch is cancelled through the edge", func() bool { return mobile.Cancels.Load() == 1 })
}

// A rejected call each way across the edge: the caller gets the callee's
// final status, the non-2xx is ACKed hop by hop (no proxy's ACK for its
// own non-2xx goes on to the callee: the edge kept its transaction until
// that ACK came, awaitAck), and the next call goes through.
func TestAccessEdgeRejectedCalls(t *testing.T) {
	e := newEnv(t)
	c, ed := e.startAccess()
	_, alice, bob := e.phones(c, ed)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for i, dir := range bothWays(alice, bob) {
		code := [...]int{486, 603}[i] // Busy Here inside, Decline outside
		dir.callee.Reject.Store(int32(code))
		acks := dir.callee.Acks.Load()
		_, err := dir.caller.Call(ctx, dir.from, dir.user, pw, dir.to)
		var rejected *sipgo.ErrDialogResponse
		if !errors.As(err, &rejected) || rejected.Res.StatusCode != code {
			t.Fatalf("%s calls %s who answers %d: %v", dir.user, dir.to, code, err)
		}
		time.Sleep(200 * time.Millisecond) // an ACK sent on would land by now
		if n := dir.callee.Acks.Load() - acks; n != 0 {
			t.Errorf("%s got %d ACKs outside any transaction after rejecting a call", dir.to, n)
		}
		dir.callee.Reject.Store(0)
		sess, err := dir.caller.Call(ctx, dir.from, dir.user, pw, dir.to)
		if err != nil || sess.InviteResponse.StatusCode != 200 {
			t.Fatalf("%s's next call: %v", dir.user, err)
		}
		if err := sess.Ack(ctx); err != nil {
			t.Fatal(err)
		}
		if err := sess.Bye(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// A user's message declaring more than twice the size limit closes the
// connection before its body is read (nothing outside makes the edge
// buffer more), and the refusal is counted. The edge runs with its default
// idle and message timeouts, which would keep the connection for minutes.
func TestAccessEdgeClosesOversizedMessage(t *testing.T) {
	e := newEnv(t)
	_, ed := e.startAccess()
	roots := accessRoots(t, e)
	huge := dialRaw(t, ed.ExternalAddr(), roots)
	_ = huge.c.SetDeadline(time.Now().Add(3 * time.Second))
	_, _ = huge.c.Write([]byte("MESSAGE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/TLS 198.51.100.7;branch=z9hG4bK-huge\r\n" +
		"From: <sip:alice@example.test>;tag=1\r\nTo: <sip:bob@example.test>\r\nCall-ID: huge\r\nCSeq: 1 MESSAGE\r\n" +
		"Content-Type: text/plain\r\nContent-Length: 204800\r\n\r\n"))
	if _, err := huge.r.ReadByte(); err == nil || isTimeout(err) {
		t.Errorf("a message declaring 200 KiB kept its connection: %v", err)
	}
	_, edgeOps := ed.Addr()
	if got := metric(t, edgeOps, `portcullis_edge_mtls_refused_total{reason="message_too_large"}`); got != "1" {
		t.Errorf("message_too_large refusals %q, want 1", got)
	}
}

// rawConn is a TLS connection to the edge's external listener for bad input.
type rawConn struct {
	t *testing.T
	c *tls.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, addr string, roots *x509.CertPool) *rawConn {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "sip.example.test", MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, r: bufio.NewReader(c)}
}

// send writes a request built from a template and returns the status code
// of the answer (0: the connection ended, -1: no answer in time).
func (r *rawConn) send(reqLine, extra, body string) int {
	r.t.Helper()
	branch := "z9hG4bK-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	msg := reqLine + "\r\nVia: SIP/2.0/TLS 198.51.100.7:5061;branch=" + branch + "\r\nMax-Forwards: 70\r\n" +
		"From: <sip:alice@example.test>;tag=1\r\nTo: <sip:alice@example.test>\r\nCall-ID: " + branch + "\r\n" + extra +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
	_ = r.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.c.Write([]byte(msg)); err != nil {
		return 0
	}
	for {
		line, err := r.r.ReadString('\n')
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				return -1
			}
			return 0
		}
		if code, ok := strings.CutPrefix(line, "SIP/2.0 "); ok {
			n, _ := strconv.Atoi(code[:3])
			// drain the rest of the response
			for {
				l, err := r.r.ReadString('\n')
				if err != nil || l == "\r\n" {
					break
				}
				if cl, ok := strings.CutPrefix(strings.ToLower(l), "content-length: "); ok {
					if m, _ := strconv.Atoi(strings.TrimSpace(cl)); m > 0 {
						_, _ = io.CopyN(io.Discard, r.r, int64(m))
					}
				}
			}
			if n == 100 {
				continue
			}
			return n
		}
	}
}

func TestAccessEdgeHardening(t *testing.T) {
	e := newEnv(t)
	_, ed := e.startAccess(func(c *edge.Config) {
		c.External.Limits.RequestsPerSecond, c.External.Limits.Burst = 1000, 1000
		c.External.Limits.ConnectionsPerAddress = 3
		c.External.Limits.IdleTimeout = 500 * time.Millisecond
	})
	roots := accessRoots(t, e)
	r := dialRaw(t, ed.ExternalAddr(), roots)
	ok := "OPTIONS sip:example.test SIP/2.0"
	for _, tc := range []struct {
		name, line, extra, body string
		want                    int
	}{
		{"valid keepalive OPTIONS", ok, "CSeq: 1 OPTIONS\r\n", "", 200},
		{"tel URI", "OPTIONS tel:+15551234 SIP/2.0", "CSeq: 2 OPTIONS\r\n", "", 416},
		{"CSeq method mismatch", ok, "CSeq: 3 INVITE\r\n", "", 400},
		{"Max-Forwards exhausted", "MESSAGE sip:bob@example.test SIP/2.0", "CSeq: 4 MESSAGE\r\nMax-Forwards: 0\r\n", "", 483},
		{"oversized", "MESSAGE sip:bob@example.test SIP/2.0", "CSeq: 5 MESSAGE\r\nContent-Type: text/plain\r\n", strings.Repeat("x", 70<<10), 413},
		{"foreign domain", "MESSAGE sip:x@elsewhere.test SIP/2.0", "CSeq: 6 MESSAGE\r\n", "", 403},
		{"still alive after all that", ok, "CSeq: 7 OPTIONS\r\n", "", 200},
	} {
		if got := r.send(tc.line, tc.extra, tc.body); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
	// Junk on the stream: the connection is closed, cleanly.
	junk := dialRaw(t, ed.ExternalAddr(), roots)
	_ = junk.c.SetDeadline(time.Now().Add(3 * time.Second))
	_, _ = junk.c.Write([]byte("\x00\x01 this is not SIP\r\n\r\n"))
	if _, err := junk.r.ReadByte(); err == nil {
		t.Error("junk answered instead of closing")
	}

	// Idle connections are closed.
	idle := dialRaw(t, ed.ExternalAddr(), roots)
	_ = idle.c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := idle.r.ReadByte(); err == nil || isTimeout(err) {
		t.Errorf("idle connection not closed by the edge: %v", err)
	}

	// At most 3 connections from one address (the earlier ones are closed
	// first, and their release counted before the test goes on).
	r.c.Close()
	time.Sleep(100 * time.Millisecond)
	for i := 0; i < 3; i++ {
		c, err := tls.Dial("tcp", ed.ExternalAddr(), &tls.Config{RootCAs: roots, ServerName: "sip.example.test"})
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		defer c.Close()
	}
	if c, err := tls.Dial("tcp", ed.ExternalAddr(), &tls.Config{RootCAs: roots, ServerName: "sip.example.test"}); err == nil {
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Error("a fourth connection from one address was kept")
		}
		c.Close()
	}
}

func TestAccessEdgeRateLimit(t *testing.T) {
	e := newEnv(t)
	_, ed := e.startAccess(func(c *edge.Config) { c.External.Limits.RequestsPerSecond, c.External.Limits.Burst = 1, 3 })
	r := dialRaw(t, ed.ExternalAddr(), accessRoots(t, e))
	limited := 0
	for i := 0; i < 10; i++ {
		if r.send("OPTIONS sip:example.test SIP/2.0", "CSeq: "+strconv.Itoa(i+1)+" OPTIONS\r\n", "") == 503 {
			limited++
		}
	}
	if limited < 6 {
		t.Fatalf("%d of 10 requests limited at 1/s with a burst of 3", limited)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// When a remote user's connection is gone the edge does not dial out to
// them: it answers the core 430 Flow Failed (RFC 5626), and the core drops
// the binding and tells the caller 480 (430 is between proxies, §11.5: it
// went to the caller until 2026-11-22); the next request gets 480 at once.
func TestFlowFailedDropsBinding(t *testing.T) {
	e := newEnv(t)
	c, ed := e.startAccess()
	roots := accessRoots(t, e)
	remote := siptest.New(t, ed.ExternalAddr(), &tls.Config{RootCAs: roots, ServerName: "sip.example.test", MinVersion: tls.VersionTLS12})
	if res := remote.Register("sip:alice@example.test", "alice", pw, "<sip:alice@198.51.100.7:5061;transport=tls>"); res.StatusCode != 200 {
		t.Fatalf("REGISTER: %d", res.StatusCode)
	}
	remote.UA.Close() // the connection goes
	inside := siptest.New(t, c.UsersAddr(), &tls.Config{RootCAs: roots, ServerName: "core1.internal", MinVersion: tls.VersionTLS12})
	if res := inside.Register("sip:bob@example.test", "bob", pw, "<sip:bob@203.0.113.20:5061;transport=tls>"); res.StatusCode != 200 {
		t.Fatalf("inside REGISTER: %d", res.StatusCode)
	}
	var res *sip.Response
	siptest.Eventually(t, "480 (flow failed) for a closed flow", func() bool {
		res = inside.Message("sip:bob@example.test", "bob", pw, "sip:alice@example.test", "are you there?")
		return res.StatusCode == 480 && strings.Contains(res.Reason, "flow failed")
	})
	if bs, _ := c.Store().Bindings(context.Background(), "sip:alice@example.test", time.Now()); len(bs) != 0 {
		t.Fatalf("binding kept after its flow failed: %+v", bs)
	}
	if res := inside.Message("sip:bob@example.test", "bob", pw, "sip:alice@example.test", "again"); res.StatusCode != 480 {
		t.Fatalf("after the binding was dropped: %d", res.StatusCode)
	}
}

// The core never dials a user either: an internal user whose connection
// is gone has its binding dropped (480 then, at once), and a request in a
// dialog with them gets 480 (flow failed).
func TestCoreDropsBindingOfClosedFlow(t *testing.T) {
	e := newEnv(t)
	c, ed := e.startAccess()
	roots := accessRoots(t, e)
	_, alice, bob := e.phones(c, ed) // alice remote, bob inside
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess := alice.CallAcked(ctx, t, bob, "sip:alice@example.test", "alice", pw, "sip:bob@example.test")
	bob.UA.UA.Close() // bob's connection goes
	time.Sleep(100 * time.Millisecond)
	if err := sess.Bye(ctx); err == nil || !strings.Contains(err.Error(), "480 Temporarily Unavailable (flow failed)") {
		t.Fatalf("BYE to a user whose connection is gone: %v, want 480", err)
	}
	carol := siptest.New(t, c.UsersAddr(), &tls.Config{RootCAs: roots, ServerName: "core1.internal", MinVersion: tls.VersionTLS12})
	if res := carol.Message("sip:carol@example.test", "carol", pw, "sip:bob@example.test", "are you there?"); res.StatusCode != 480 {
		t.Fatalf("MESSAGE to a user whose connection is gone: %d, want 480", res.StatusCode)
	}
	if bs, _ := c.Store().Bindings(context.Background(), "sip:bob@example.test", time.Now()); len(bs) != 0 {
		t.Fatalf("binding kept after its flow failed: %+v", bs)
	}

	// Of bob's three devices, the second one's connection goes: the others
	// still get his IMs.
	var devices []*siptest.UA
	for i := range 3 {
		d := siptest.New(t, c.UsersAddr(), &tls.Config{RootCAs: roots, ServerName: "core1.internal", MinVersion: tls.VersionTLS12})
		if res := d.Register("sip:bob@example.test", "bob", pw, fmt.Sprintf("<sip:bob@203.0.113.%d:5061;transport=tls>", 30+i)); res.StatusCode != 200 {
			t.Fatalf("device %d: %d", i, res.StatusCode)
		}
		devices = append(devices, d)
	}
	devices[1].UA.Close()
	time.Sleep(100 * time.Millisecond)
	if res := carol.Message("sip:carol@example.test", "carol", pw, "sip:bob@example.test", "still there?"); res.StatusCode != 200 {
		t.Fatalf("MESSAGE to bob with one device gone: %d", res.StatusCode)
	}
	for _, i := range []int{0, 2} {
		if got := devices[i].WaitMessages(1, 2*time.Second); len(got) != 1 {
			t.Fatalf("device %d got %d IMs", i, len(got))
		}
	}
	if bs, _ := c.Store().Bindings(context.Background(), "sip:bob@example.test", time.Now()); len(bs) != 2 {
		t.Fatalf("%d bindings left, want the two live ones", len(bs))
	}
}

// Slow read: a peer that trickles a message a byte at a time, each byte
// well inside the idle timeout, is cut off once the message is not complete
// within the message timeout; CRLF keep-alives at the same pace are not a
// message, and a request sent slowly but completed in time is answered.
func TestAccessEdgeSlowMessage(t *testing.T) {
	e := newEnv(t)
	_, ed := e.startAccess(func(c *edge.Config) {
		c.External.Limits.RequestsPerSecond, c.External.Limits.Burst = 1000, 1000
		c.External.Limits.IdleTimeout = 800 * time.Millisecond
		c.External.Limits.MessageTimeout = 1500 * time.Millisecond
	})
	roots := accessRoots(t, e)
	trickle := func(r *rawConn, s string, every time.Duration, until time.Time) error {
		for i := 0; i < len(s) && time.Now().Before(until); i++ {
			if _, err := r.c.Write([]byte{s[i]}); err != nil {
				return err
			}
			time.Sleep(every)
		}
		return nil
	}
	start := time.Now()
	slow := dialRaw(t, ed.ExternalAddr(), roots)
	closed := make(chan time.Duration, 1)
	go func() {
		_ = slow.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := slow.r.ReadByte()
		if err != nil && !isTimeout(err) {
			closed <- time.Since(start)
		}
		close(closed)
	}()
	_ = trickle(slow, "OPTIONS sip:example.test SIP/2.0\r\nVia: SIP/2.0/TLS 198.51.100.7:5061;branch=z9hG4bK-slow\r\n", 200*time.Millisecond, time.Now().Add(5*time.Second))
	took, ok := <-closed
	if !ok {
		t.Fatal("a message trickled for 5 s was not cut off")
	}
	if took > 4*time.Second {
		t.Errorf("cut off after %s; the message timeout is 1.5 s", took)
	}

	// Keep-alives at the same pace, for longer than the message timeout.
	alive := dialRaw(t, ed.ExternalAddr(), roots)
	if err := trickle(alive, strings.Repeat("\r\n", 6), 400*time.Millisecond, time.Now().Add(5*time.Second)); err != nil {
		t.Fatalf("keep-alives: %v", err)
	}
	if got := alive.send("OPTIONS sip:example.test SIP/2.0", "CSeq: 1 OPTIONS\r\n", ""); got != 200 {
		t.Fatalf("after %s of keep-alives: %d, want 200", 2400*time.Millisecond, got)
	}
}

// The MRAS role end to end: a remote user asks the core for TURN
// credentials with SIP SERVICE through the edge ([MS-AVEDGEA]), and the
// edge's media relay takes them; another identity is refused.
func TestRemoteUserGetsRelayCredentials(t *testing.T) {
	e := newEnv(t)
	c, ed := e.startAccess(func(cfg *edge.Config) {
		cfg.TURN.Enabled = true
		cfg.TURN.Realm = "example.test"
		cfg.TURN.SecretFile = e.secret // the core issues under the same secret
		cfg.TURN.ListenUDP = []string{"127.0.0.1:0"}
		cfg.TURN.Relay.BindIPv4, cfg.TURN.Relay.PortMin, cfg.TURN.Relay.PortMax = "127.0.0.1", 50000, 59999
		cfg.TURN.AllowedPeers = []string{"127.0.0.1/32"}
	})
	remoteUA, _, _ := e.phones(c, ed)
	const mras = "application/msrtc-media-relay-auth+xml"
	request := func(identity string) string {
		return `<request requestID="1" from="sip:alice@example.test" version="1.0" to="sip:mras" xmlns="http://schemas.microsoft.com/2006/09/sip/mrasp"><credentialsRequest credentialsRequestID="2"><identity>` +
			identity + `</identity><location>internet</location><duration>480</duration></credentialsRequest></request>`
	}
	res := remoteUA.Service("sip:alice@example.test", "alice", pw, "sip:alice@example.test", mras, request("sip:alice@example.test"))
	if res.StatusCode != 200 {
		t.Fatalf("SERVICE through the edge: %d %s", res.StatusCode, res.Reason)
	}
	var got struct {
		Username string `xml:"credentialsResponse>credentials>username"`
		Password string `xml:"credentialsResponse>credentials>password"`
	}
	if err := xml.Unmarshal(res.Body(), &got); err != nil || got.Username == "" {
		t.Fatalf("answer: %v\n%s", err, res.Body())
	}
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	relayed, err := turntest.Client(t, ed.Relay().Listeners()[0].Address, conn, got.Username, got.Password, "example.test").Allocate()
	if err != nil {
		t.Fatalf("the edge's relay refused credentials the core issued: %v", err)
	}
	relayed.Close()
	if res := remoteUA.Service("sip:alice@example.test", "alice", pw, "sip:alice@example.test", mras, request("sip:bob@example.test")); res.StatusCode != 403 {
		t.Fatalf("credentials for another identity: %d, want 403", res.StatusCode)
	}
}

// A remote user over IPv6: the edge's external listener on ::1 (its flow
// tokens, Path and Record-Route carry an IPv6 source): registration, IM
// both ways, and a call each way with the hang-up.
func TestAccessEdgeIPv6RemoteUser(t *testing.T) {
	if ln, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Fatalf("this machine has no IPv6 loopback: %v", err)
	} else {
		ln.Close()
	}
	e := newEnv(t)
	c, ed := e.startAccess(func(cfg *edge.Config) { cfg.External.Listen = "[::1]:0" })
	remoteUA, alice, bob := e.phones(c, ed)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if res := remoteUA.Message("sip:alice@example.test", "alice", pw, "sip:bob@example.test", "over IPv6"); res.StatusCode != 200 {
		t.Fatalf("IM in: %d", res.StatusCode)
	}
	if res := bob.Message("sip:bob@example.test", "bob", pw, "sip:alice@example.test", "back over IPv6"); res.StatusCode != 200 {
		t.Fatalf("IM out: %d", res.StatusCode)
	}
	if n := len(remoteUA.WaitMessages(1, 5*time.Second)); n != 1 {
		t.Fatalf("alice got %d IMs", n)
	}
	for _, dir := range bothWays(alice, bob) {
		sess := dir.caller.CallAcked(ctx, t, dir.callee, dir.from, dir.user, pw, dir.to)
		byes := dir.callee.Byes.Load()
		if err := sess.Bye(ctx); err != nil {
			t.Fatalf("%s hangs up: %v", dir.user, err)
		}
		siptest.Eventually(t, "the callee gets the BYE", func() bool { return dir.callee.Byes.Load() == byes+1 })
	}
}

// An OPTIONS addressed to the edge itself (a client's keep-alive or
// capability query) is answered by the edge, 200 with its method list,
// by its listener's address or its public name; one for a home user goes
// to the core as before (authenticated there).
func TestAccessEdgeAnswersOptionsToItself(t *testing.T) {
	e := newEnv(t)
	c, ed := e.startAccess(func(cfg *edge.Config) { cfg.External.PublicName = "sip.example.test" })
	remoteUA, _, _ := e.phones(c, ed)
	for _, target := range []string{"sip:" + ed.ExternalAddr() + ";transport=tls", "sip:sip.example.test"} {
		res := remoteUA.Request(sip.OPTIONS, "sip:alice@example.test", target)
		if res.StatusCode != 200 || res.GetHeader("Allow") == nil || !strings.Contains(res.GetHeader("Allow").Value(), "INVITE") {
			t.Fatalf("OPTIONS to %s: %d %v", target, res.StatusCode, res.GetHeader("Allow"))
		}
	}
	if res := remoteUA.Request(sip.OPTIONS, "sip:alice@example.test", "sip:bob@example.test"); res.StatusCode != 407 {
		t.Fatalf("OPTIONS to a home user without credentials: %d, want 407 from the core", res.StatusCode)
	}
	if res := remoteUA.Request(sip.OPTIONS, "sip:alice@example.test", "sip:other.test"); res.StatusCode != 403 {
		t.Fatalf("OPTIONS to another domain: %d, want 403", res.StatusCode)
	}
}

// The edge's Record-Route token, held by a remote party to one call, takes
// nothing past authentication: an IM with it and no credentials gets 407
// (403 to a contact address);
// one made to look in-dialog (a To tag) in another Call-ID gets 403; one in
// the call's own Call-ID to a contact of someone else gets no further.
// Before, each of them reached a user inside, sender spoofed.
func TestAccessEdgeRouteTokensStayInTheirDialog(t *testing.T) {
	e := newEnv(t)
	c, ed := e.startAccess()
	remoteUA, alice, bob := e.phones(c, ed)
	carolUA := siptest.New(t, c.UsersAddr(), &tls.Config{RootCAs: accessRoots(t, e), ServerName: "core1.internal", MinVersion: tls.VersionTLS12})
	if res := carolUA.Register("sip:carol@example.test", "carol", pw, "<sip:carol@203.0.113.21:5061;transport=tls>"); res.StatusCode != 200 {
		t.Fatalf("carol: %d", res.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	sess := alice.CallAcked(ctx, t, bob, "sip:alice@example.test", "alice", pw, "sip:bob@example.test")
	rr := sess.InviteResponse.GetHeader("Record-Route")
	if rr == nil {
		t.Fatal("no Record-Route")
	}
	route := sip.NewHeader("Route", rr.Value())
	carolContact := "sip:carol@203.0.113.21:5061;transport=tls"
	if res := remoteUA.Forged(sip.MESSAGE, "sip:bob@example.test", carolContact, "", "", "no credentials", route); res.StatusCode < 400 {
		t.Errorf("IM to carol's contact with the call's Route and no credentials: %d", res.StatusCode)
	}
	if res := remoteUA.Forged(sip.MESSAGE, "sip:bob@example.test", "sip:carol@example.test", "", "", "no credentials", route); res.StatusCode != 407 {
		t.Errorf("IM to carol with the call's Route and no credentials: %d %s, want 407", res.StatusCode, res.Reason)
	}
	if res := remoteUA.Forged(sip.MESSAGE, "sip:bob@example.test", carolContact, "made-up", "", "another Call-ID", route); res.StatusCode != 403 {
		t.Errorf("IM with a To tag and the call's Route in another Call-ID: %d, want 403", res.StatusCode)
	}
	if res := remoteUA.Forged(sip.MESSAGE, "sip:bob@example.test", carolContact, "made-up", sess.InviteRequest.CallID().Value(), "the call's Call-ID", route); res.StatusCode < 400 {
		t.Errorf("IM in the call's Call-ID to carol's contact: %d", res.StatusCode)
	}
	time.Sleep(200 * time.Millisecond)
	if n := len(carolUA.WaitMessages(0, 0)); n != 0 {
		t.Fatalf("carol received %d IMs sent with alice's Route", n)
	}
	// The call goes on: bob hangs up.
	in := bob.Incoming()
	if res, err := siptest.InDialog(ctx, nil, in, sip.INFO); err != nil || res.StatusCode != 200 {
		t.Fatalf("INFO from bob in the call: %v %v", res, err)
	}
	hangUp(ctx, t, direction{caller: alice, callee: bob, user: "alice"}, sess, false)
}

// A remote user's flow is their connection to the edge, not its address:
// once alice's connection has closed, a new connection from the same
// address and port (a NAT giving the port to someone else) gets none of
// her requests: the edge answers the core 430 (the flow failed), the core
// drops the binding and tells bob 480, and the next IM gets 480 at once. It went to the newcomer:
// the edge's Path named the address only.
func TestAccessEdgeFlowIsTheConnection(t *testing.T) {
	e := newEnv(t)
	c, ed := e.startAccess()
	roots := accessRoots(t, e)
	remote := &tls.Config{RootCAs: roots, ServerName: "sip.example.test", MinVersion: tls.VersionTLS12}
	pipe := siptest.NewPipe(t, ed.ExternalAddr()) // so that her connection can be cut for sure
	aliceUA := siptest.New(t, pipe.Addr(), remote)
	if res := aliceUA.Register("sip:alice@example.test", "alice", pw, "<sip:alice@198.51.100.7:5061;transport=tls>"); res.StatusCode != 200 {
		t.Fatalf("alice: %d", res.StatusCode)
	}
	local := pipe.Outbound()
	pipe.Cut()
	time.Sleep(100 * time.Millisecond)
	squatter := siptest.Squat(t, local, ed.ExternalAddr(), remote)
	bob := siptest.New(t, c.UsersAddr(), &tls.Config{RootCAs: roots, ServerName: "core1.internal", MinVersion: tls.VersionTLS12})
	res := bob.Message("sip:bob@example.test", "bob", pw, "sip:alice@example.test", "for alice only")
	if line := squatter.Got(300 * time.Millisecond); line != "" {
		t.Fatalf("a new connection from alice's old address got %q (bob's IM: %d)", strings.TrimSpace(line), res.StatusCode)
	}
	if res.StatusCode != 480 || !strings.Contains(res.Reason, "flow failed") {
		t.Fatalf("IM to alice, whose connection is gone: %d %s, want 480 (the edge's Flow Failed, told as 480)", res.StatusCode, res.Reason)
	}
	if res := bob.Message("sip:bob@example.test", "bob", pw, "sip:alice@example.test", "again"); res.StatusCode != 480 {
		t.Fatalf("the next IM: %d, want 480 (the binding dropped)", res.StatusCode)
	}
}
