package edge_test

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"portcullis/access/accesstest"
	"portcullis/core"
	"portcullis/core/confinfo"
	"portcullis/edge"
	"portcullis/internal/sipclient"
	"portcullis/internal/siptest"
	"portcullis/policy"
)

// A remote user and an anonymous guest join a meeting through the edge,
// see the roster and chat with an internal user; guests are refused while
// the edge's anonymous switch is off.
func TestMeetingThroughEdge(t *testing.T) {
	e := newEnv(t)
	c, ed := e.startAccess(func(c *edge.Config) { c.Federation.AllowAnonymous = true })
	ctx := context.Background()
	m, err := core.NewFactory(c.Store()).Create(ctx, core.MeetingOptions{Organizer: "sip:alice@example.test", Admission: core.AdmitAnonymous})
	if err != nil {
		t.Fatal(err)
	}
	uri := core.ConferenceURI(m.Organizer, m.ID)
	join := func(server, name, aor, password string) (*sipclient.Conference, error) {
		return joinMeeting(t, sipclient.Options{Server: server, ServerName: name, CAFile: e.pki.CAFile(), AOR: aor, Password: password, DisplayName: "Guest"}, uri)
	}
	alice, err := join(c.UsersAddr(), "core1.internal", "sip:alice@example.test", pw) // inside
	if err != nil {
		t.Fatal(err)
	}
	bob, err := join(ed.ExternalAddr(), "sip.example.test", "sip:bob@example.test", pw) // remote, through the edge
	if err != nil {
		t.Fatalf("remote join: %v", err)
	}
	guest, err := join(ed.ExternalAddr(), "sip.example.test", "sip:guest1@anonymous.invalid", m.Key)
	if err != nil {
		t.Fatalf("guest join: %v", err)
	}
	if _, err := join(ed.ExternalAddr(), "sip.example.test", "sip:guest2@anonymous.invalid", "12345678"); err == nil {
		t.Fatal("a guest with a wrong key joined")
	}
	for name, cf := range map[string]*sipclient.Conference{"alice": alice, "bob": bob, "guest": guest} {
		waitRoster(t, cf, name, func(r confinfo.Roster) bool { return len(r.Users) == 3 })
	}
	// Group IM from the remote user reaches the others; the edge's IM filter
	// makes its link safe on the way in.
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := bob.IM(ictx, "see http://plans.example.com"); err != nil {
		t.Fatal(err)
	}
	for name, cf := range map[string]*sipclient.Conference{"alice": alice, "guest": guest} {
		waitConfIM(t, cf, name, "sip:bob@example.test", "see _http://plans.example.com")
	}
	if err := alice.IM(ictx, "welcome"); err != nil {
		t.Fatal(err)
	}
	waitConfIM(t, bob, "bob", "sip:alice@example.test", "welcome")

	// With the switch off, guests do not get past the edge.
	off := ed.Config()
	off.Federation.AllowAnonymous = false
	if err := ed.Reload(off); err != nil {
		t.Fatal(err)
	}
	if _, err := join(ed.ExternalAddr(), "sip.example.test", "sip:guest3@anonymous.invalid", m.Key); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("guest with anonymous users off: %v", err)
	}
}

// joinMeeting joins a meeting with a new client, closed when the test ends.
func joinMeeting(t *testing.T, o sipclient.Options, uri string) (*sipclient.Conference, error) {
	t.Helper()
	cl, err := sipclient.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return cl.Join(ctx, uri)
}

func waitRoster(t *testing.T, cf *sipclient.Conference, name string, ok func(confinfo.Roster) bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for !ok(cf.Roster()) {
		select {
		case <-cf.Events():
		case <-deadline:
			t.Fatalf("%s: roster %+v", name, cf.Roster())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func waitConfIM(t *testing.T, cf *sipclient.Conference, name, from, text string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev, open := <-cf.Events():
			if !open {
				t.Fatalf("%s: events ended", name)
			}
			if ev.IM != nil && ev.IM.From == from && ev.IM.Text == text {
				return
			}
		case <-deadline:
			t.Fatalf("%s: no IM %q from %s", name, text, from)
		}
	}
}

// A partner's user joins a meeting of org A through both edges when the
// meeting admits federated users; a closed meeting refuses them.
func TestFederatedUserJoinsMeeting(t *testing.T) {
	pub := accesstest.New(t)
	var a, b *org
	b = startOrg(t, pub, "partner.test", nil)
	a = startOrg(t, pub, "example.test", func(c *edge.Config) {
		c.Federation.Partners = []policy.PartnerConfig{{Domain: "partner.test", Edge: b.edge.ExternalAddr()}}
	})
	b.reload(func(c *edge.Config) {
		c.Federation.Partners = []policy.PartnerConfig{{Domain: "example.test", Edge: a.edge.ExternalAddr()}}
	})
	ctx := context.Background()
	f := core.NewFactory(a.core.Store())
	open, err := f.Create(ctx, core.MeetingOptions{Organizer: "sip:alice@example.test", Admission: core.AdmitOpen})
	if err != nil {
		t.Fatal(err)
	}
	closed, _ := f.Create(ctx, core.MeetingOptions{Organizer: "sip:alice@example.test"})
	join := func(o *org, aor, uri string) (*sipclient.Conference, error) {
		return joinMeeting(t, sipclient.Options{Server: o.core.UsersAddr(), ServerName: "core1.internal", CAFile: o.ecfg.TLS.CAFile, AOR: aor, Password: pw}, uri)
	}
	uri := core.ConferenceURI(open.Organizer, open.ID)
	alice, err := join(a, "sip:alice@example.test", uri)
	if err != nil {
		t.Fatal(err)
	}
	bob, err := join(b, "sip:bob@partner.test", uri) // inside org B, through B's edge and A's edge
	if err != nil {
		t.Fatalf("federated join: %v", err)
	}
	waitRoster(t, alice, "alice", func(r confinfo.Roster) bool { _, in := r.Users["sip:bob@partner.test"]; return in })
	waitRoster(t, bob, "bob", func(r confinfo.Roster) bool { return len(r.Users) == 2 })
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := bob.IM(ictx, "hello from the partner"); err != nil {
		t.Fatal(err)
	}
	waitConfIM(t, alice, "alice", "sip:bob@partner.test", "hello from the partner")
	if err := alice.IM(ictx, "welcome, partner"); err != nil {
		t.Fatal(err)
	}
	waitConfIM(t, bob, "bob", "sip:alice@example.test", "welcome, partner")
	if _, err := join(b, "sip:alice@partner.test", core.ConferenceURI(closed.Organizer, closed.ID)); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("federated user into a closed meeting: %v", err)
	}
}

// A remote user's client that only waits for IMs (`portcullis client
// listen`) keeps its connection through the edge's idle timeout with CRLF
// keep-alives (RFC 5626 §4.4.1): it re-registered only every nine minutes,
// and the edge closes a connection silent for five (here 1 s), so IMs to
// it failed (480) for minutes at a time.
func TestListenerKeptAliveThroughEdge(t *testing.T) {
	e := newEnv(t)
	c, ed := e.startAccess(func(c *edge.Config) { c.External.Limits.IdleTimeout = time.Second })
	cl, err := sipclient.New(sipclient.Options{Server: ed.ExternalAddr(), ServerName: "sip.example.test", CAFile: e.pki.CAFile(),
		AOR: "sip:alice@example.test", Password: pw, KeepAlive: 400 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan sipclient.IM, 1)
	listening := make(chan error, 1)
	go func() { listening <- cl.Listen(ctx, func(im sipclient.IM) { got <- im }) }()
	bob := siptest.New(t, c.UsersAddr(), &tls.Config{RootCAs: accessRoots(t, e), ServerName: "core1.internal", MinVersion: tls.VersionTLS12})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if bs, _ := c.Store().Bindings(context.Background(), "sip:alice@example.test", time.Now()); len(bs) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("alice did not register")
		}
	}
	time.Sleep(3 * time.Second) // three idle timeouts
	if res := bob.Message("sip:bob@example.test", "bob", pw, "sip:alice@example.test", "still there?"); res.StatusCode != 200 {
		t.Fatalf("IM to a listening remote user after 3 s: %d %s", res.StatusCode, res.Reason)
	}
	select {
	case im := <-got:
		if im.Text != "still there?" {
			t.Fatalf("got %q", im.Text)
		}
	case err := <-listening:
		t.Fatalf("Listen ended: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the IM did not arrive")
	}
}
