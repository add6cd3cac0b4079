package core_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"portcullis/access/accesstest"
	"portcullis/core"
	"portcullis/core/c3p"
	"portcullis/core/confinfo"
	"portcullis/core/store"
	"portcullis/internal/sipclient"
	"portcullis/internal/siptest"
)

// withMeeting starts a core with users (names @example.test) and one
// meeting, and returns the meeting and its conference URI.
func withMeeting(t *testing.T, o core.MeetingOptions, users ...string) (*core.Server, *accesstest.PKI, store.Meeting, string) {
	t.Helper()
	return withMeetingTuned(t, func(*core.Config) {}, o, users...)
}

// withMeetingTuned is withMeeting with a config change.
func withMeetingTuned(t *testing.T, tune func(*core.Config), o core.MeetingOptions, users ...string) (*core.Server, *accesstest.PKI, store.Meeting, string) {
	t.Helper()
	s, pki, _ := startCore(t, tune)
	for _, u := range users {
		if err := core.AddUser(context.Background(), s.Store(), "sip:"+u+"@example.test", alicePW); err != nil {
			t.Fatal(err)
		}
	}
	m, err := core.NewFactory(s.Store()).Create(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	return s, pki, m, core.ConferenceURI(m.Organizer, m.ID)
}

// joinAs joins a meeting on the core's users listener as user.
func joinAs(t *testing.T, s *core.Server, caFile, aor, password, uri string) (*sipclient.Conference, error) {
	t.Helper()
	return joinVia(t, s.UsersAddr(), caFile, aor, password, uri)
}

// joinVia is joinAs through server (the users listener, or a pipe to it).
func joinVia(t *testing.T, server, caFile, aor, password, uri string) (*sipclient.Conference, error) {
	t.Helper()
	c, err := sipclient.New(sipclient.Options{Server: server, ServerName: "core1.internal", CAFile: caFile, AOR: aor, Password: password, DisplayName: strings.Split(strings.TrimPrefix(aor, "sip:"), "@")[0]})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.Join(ctx, uri)
}

// until waits (bounded) for a roster that satisfies ok.
func until(t *testing.T, cf *sipclient.Conference, what string, ok func(confinfo.Roster) bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		if ok(cf.Roster()) {
			return
		}
		select {
		case _, open := <-cf.Events():
			if !open && !ok(cf.Roster()) {
				t.Fatalf("%s: events ended; roster %+v", what, cf.Roster())
			}
		case <-deadline:
			t.Fatalf("%s: roster %+v", what, cf.Roster())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func role(r confinfo.Roster, entity string) string {
	u, ok := r.Users[entity]
	if !ok || len(u.Roles) == 0 {
		return ""
	}
	return u.Roles[0]
}

func status(r confinfo.Roster, entity string) string {
	u, ok := r.Users[entity]
	if !ok || len(u.Endpoints) == 0 {
		return ""
	}
	return u.Endpoints[0].Status
}

func cmd(t *testing.T, cf *sipclient.Conference, c c3p.Command) *c3p.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := cf.Command(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func user(entity string, roles ...string) *c3p.User { return &c3p.User{Entity: entity, Roles: roles} }

func TestFocusMeeting(t *testing.T) {
	s, pki, m, uri := withMeeting(t, core.MeetingOptions{Organizer: "sip:alice@example.test", Admission: core.AdmitAnonymous, Subject: "Plans"}, "alice", "bob", "carol")
	ctx := context.Background()
	const alice, bob, carol = "sip:alice@example.test", "sip:bob@example.test", "sip:carol@example.test"

	a, err := joinAs(t, s, pki.CAFile(), alice, alicePW, uri)
	if err != nil {
		t.Fatal(err)
	}
	until(t, a, "alice sees herself as organiser", func(r confinfo.Roster) bool { return role(r, alice) == "organizer" })
	b, err := joinAs(t, s, pki.CAFile(), bob, alicePW, uri)
	if err != nil {
		t.Fatal(err)
	}
	until(t, a, "alice sees bob", func(r confinfo.Roster) bool { return role(r, bob) == "attendee" })
	until(t, b, "bob sees both", func(r confinfo.Roster) bool { return len(r.Users) == 2 })

	// Wrong password, and a wrong conference key for a guest.
	if _, err := joinAs(t, s, pki.CAFile(), carol, "wrong password!", uri); err == nil {
		t.Fatal("joined with a wrong password")
	}
	if _, err := joinAs(t, s, pki.CAFile(), "sip:guest1@anonymous.invalid", "00000000", uri); err == nil {
		t.Fatal("guest joined with a wrong key")
	}
	g, err := joinAs(t, s, pki.CAFile(), "sip:guest1@anonymous.invalid", m.Key, uri)
	if err != nil {
		t.Fatalf("guest with the key: %v", err)
	}
	until(t, a, "alice sees the guest", func(r confinfo.Roster) bool { return role(r, "sip:guest1@anonymous.invalid") == "attendee" })

	// Group IM: everyone else gets it, named by sender.
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := b.IM(ictx, "hello all"); err != nil {
		t.Fatal(err)
	}
	for name, cf := range map[string]*sipclient.Conference{"alice": a, "guest": g} {
		waitIM(t, cf, name, bob, "hello all")
	}

	// An attendee's forbidden command: a failure with a reason, nothing changes.
	lock := c3p.Cmd("modifyConferenceLock")
	yes := true
	lock.Locked = &yes
	if res := cmd(t, b, lock); res.Code != c3p.Failure || res.Reason != c3p.ReasonForbidden {
		t.Fatalf("attendee locks: %+v", res)
	}
	promote := c3p.Cmd("modifyUserRoles")
	promote.User = user(carol, "presenter")
	if res := cmd(t, b, promote); res.Code != c3p.Failure || res.Reason != c3p.ReasonForbidden {
		t.Fatalf("attendee promotes: %+v", res)
	}
	if a.Roster().Locked {
		t.Fatal("locked by an attendee")
	}
	// The organiser promotes bob and locks; carol cannot join, the
	// presenter bob could.
	promote.User = user(bob, "presenter")
	if res := cmd(t, a, promote); res.Code != c3p.Success {
		t.Fatalf("promote: %+v", res)
	}
	until(t, g, "the guest sees bob presenting", func(r confinfo.Roster) bool { return role(r, bob) == "presenter" })
	if res := cmd(t, b, lock); res.Code != c3p.Success {
		t.Fatalf("presenter locks: %+v", res)
	}
	until(t, a, "lock notified", func(r confinfo.Roster) bool { return r.Locked })
	if _, err := joinAs(t, s, pki.CAFile(), carol, alicePW, uri); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("joining a locked meeting: %v", err)
	}
	// Unknown command and malformed arguments.
	if res := cmd(t, a, c3p.Cmd("launchRockets")); res.Code != c3p.Failure || res.Reason != c3p.ReasonNotSupported {
		t.Fatalf("unknown command: %+v", res)
	}
	bad := c3p.Cmd("modifyUserRoles")
	bad.User = user(bob, "emperor")
	if res := cmd(t, a, bad); res.Code != c3p.Failure || res.Reason != c3p.ReasonBadArgument {
		t.Fatalf("bad role: %+v", res)
	}

	// Eject the guest: a final NOTIFY or a BYE ends its events; the others
	// see it leave.
	eject := c3p.Cmd("deleteUser")
	eject.User = user("sip:guest1@anonymous.invalid")
	if res := cmd(t, b, eject); res.Code != c3p.Success {
		t.Fatalf("eject: %+v", res)
	}
	waitEnded(t, g)
	until(t, a, "guest gone", func(r confinfo.Roster) bool { _, in := r.Users["sip:guest1@anonymous.invalid"]; return !in })
	if res := cmd(t, a, eject); res.Code != c3p.Failure || res.Reason != c3p.ReasonNoUser {
		t.Fatalf("eject again: %+v", res)
	}

	// getConference and leaving.
	get := cmd(t, b, c3p.Cmd("getConference"))
	if get.Code != c3p.Success || len(get.Result.Conferences) != 1 || len(get.Result.Conferences[0].Users) != 2 || !get.Result.Conferences[0].Locked {
		t.Fatalf("getConference: %+v", get)
	}
	lctx, lcancel := context.WithTimeout(ctx, 5*time.Second)
	defer lcancel()
	b.Leave(lctx)
	until(t, a, "bob left", func(r confinfo.Roster) bool { _, in := r.Users[bob]; return !in })
	// The promotion is durable.
	if us, _ := s.Store().MeetingUsers(ctx, m.ID); !strings.Contains(strings.Join(func() []string {
		var out []string
		for _, u := range us {
			out = append(out, u.User+"="+u.Role)
		}
		return out
	}(), ","), bob+"=presenter") {
		t.Fatalf("durable roles: %+v", us)
	}
}

func waitIM(t *testing.T, cf *sipclient.Conference, name, from, text string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case e, open := <-cf.Events():
			if !open {
				t.Fatalf("%s: events ended before the IM", name)
			}
			if e.IM != nil && e.IM.From == from && e.IM.Text == text {
				return
			}
		case <-deadline:
			t.Fatalf("%s: no IM %q from %s", name, text, from)
		}
	}
}

func waitEnded(t *testing.T, cf *sipclient.Conference) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case _, open := <-cf.Events():
			if !open {
				return
			}
		case <-deadline:
			t.Fatal("still in the conference")
		}
	}
}

func TestFocusLobby(t *testing.T) {
	s, pki, m, uri := withMeeting(t, core.MeetingOptions{Organizer: "sip:alice@example.test", Admission: core.AdmitAnonymous, Lobby: true}, "alice", "bob")
	ctx := context.Background()
	const alice, bob, guest = "sip:alice@example.test", "sip:bob@example.test", "sip:guest7@anonymous.invalid"
	a, err := joinAs(t, s, pki.CAFile(), alice, alicePW, uri)
	if err != nil {
		t.Fatal(err)
	}
	b, err := joinAs(t, s, pki.CAFile(), bob, alicePW, uri)
	if err != nil {
		t.Fatal(err)
	}
	// bob waits in the lobby: the organiser sees him pending; he sees only himself.
	until(t, a, "bob in the lobby", func(r confinfo.Roster) bool { return status(r, bob) == confinfo.Pending })
	until(t, b, "bob sees himself waiting", func(r confinfo.Roster) bool { return status(r, bob) == confinfo.Pending })
	if _, seen := b.Roster().Users[alice]; seen {
		t.Fatal("a lobby participant sees the roster")
	}
	// Nor may he chat while waiting.
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := b.IM(ictx, "let me in"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("IM from the lobby: %v", err)
	}
	admit := c3p.Cmd("setUserAccess")
	admit.User, admit.Access = user(bob), "admit"
	if res := cmd(t, b, admit); res.Code != c3p.Failure || res.Reason != c3p.ReasonForbidden {
		t.Fatalf("admitting oneself: %+v", res)
	}
	if res := cmd(t, a, admit); res.Code != c3p.Success {
		t.Fatalf("admit: %+v", res)
	}
	until(t, b, "bob admitted sees alice", func(r confinfo.Roster) bool {
		return status(r, bob) == confinfo.Connected && role(r, alice) == "organizer"
	})

	// A guest waits, is denied (BYE), and may not come back.
	g, err := joinAs(t, s, pki.CAFile(), guest, m.Key, uri)
	if err != nil {
		t.Fatal(err)
	}
	until(t, a, "guest in the lobby", func(r confinfo.Roster) bool { return status(r, guest) == confinfo.Pending })
	deny := c3p.Cmd("setUserAccess")
	deny.User, deny.Access = user(guest), "deny"
	if res := cmd(t, a, deny); res.Code != c3p.Success {
		t.Fatalf("deny: %+v", res)
	}
	waitEnded(t, g)
	if _, err := joinAs(t, s, pki.CAFile(), guest, m.Key, uri); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("a denied guest joins again: %v", err)
	}
	if res := cmd(t, a, deny); res.Code != c3p.Failure || res.Reason != c3p.ReasonNoUser {
		t.Fatalf("deny someone not waiting: %+v", res)
	}
}

// Meetings, roles and the lock survive a core restart; the participants'
// clients join again on their own and the roster converges.
func TestFocusSurvivesRestart(t *testing.T) {
	s, pki, _, uri := withMeeting(t, core.MeetingOptions{Organizer: "sip:alice@example.test"}, "alice", "bob")
	ctx := context.Background()
	cfg := s.Config()
	cfg.SIP.UsersListen = s.UsersAddr()
	cfg.SIP.Listen, _ = s.Addr()
	cfg.HTTPS.Listen = s.HTTPSAddr()
	const alice, bob = "sip:alice@example.test", "sip:bob@example.test"
	join := func(aor string) *sipclient.Conference {
		c, err := sipclient.New(sipclient.Options{Server: cfg.SIP.UsersListen, ServerName: "core1.internal", CAFile: pki.CAFile(), AOR: aor, Password: alicePW,
			ConferenceRefresh: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		jctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		cf, err := c.Join(jctx, uri)
		if err != nil {
			t.Fatal(err)
		}
		return cf
	}
	a, b := join(alice), join(bob)
	until(t, a, "both in", func(r confinfo.Roster) bool { return len(r.Users) == 2 })
	promote := c3p.Cmd("modifyUserRoles")
	promote.User = user(bob, "presenter")
	if res := cmd(t, a, promote); res.Code != c3p.Success {
		t.Fatalf("promote: %+v", res)
	}
	lock := c3p.Cmd("modifyConferenceLock")
	yes := true
	lock.Locked = &yes
	if res := cmd(t, b, lock); res.Code != c3p.Success {
		t.Fatalf("lock: %+v", res)
	}
	until(t, a, "locked", func(r confinfo.Roster) bool { return r.Locked && role(r, bob) == "presenter" })

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := core.Start(ctx, cfg, depsFor(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s2.Close() })
	// Both come back on their own; the lock and bob's role were kept.
	for name, cf := range map[string]*sipclient.Conference{"alice": a, "bob": b} {
		deadline := time.After(10 * time.Second)
		for rejoined := false; !rejoined; {
			select {
			case ev := <-cf.Events():
				rejoined = ev.Rejoined
			case <-deadline:
				t.Fatalf("%s did not join again after the restart", name)
			}
		}
		until(t, cf, name+" back after the restart", func(r confinfo.Roster) bool {
			return len(r.Users) == 2 && r.Locked && role(r, bob) == "presenter" && role(r, alice) == "organizer"
		})
	}
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := a.IM(ictx, "still here"); err != nil {
		t.Fatal(err)
	}
	waitIM(t, b, "bob", alice, "still here")
}

// Bad input to a Focus gets a precise answer and changes nothing; deleting
// a running meeting ends it for everyone; a late joiner gets no history.
func TestFocusBadInputAndDelete(t *testing.T) {
	s, pki, m, uri := withMeeting(t, core.MeetingOptions{Organizer: "sip:alice@example.test"}, "alice", "bob")
	ctx := context.Background()
	// A conference that does not exist.
	if _, err := joinAs(t, s, pki.CAFile(), "sip:alice@example.test", alicePW, core.ConferenceURI(m.Organizer, "NOSUCHMEETING123")); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("unknown conference: %v", err)
	}
	a, err := joinAs(t, s, pki.CAFile(), "sip:alice@example.test", alicePW, uri)
	if err != nil {
		t.Fatal(err)
	}
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := a.IM(ictx, "said before bob came"); err != nil {
		t.Fatal(err)
	}
	b, err := joinAs(t, s, pki.CAFile(), "sip:bob@example.test", alicePW, uri)
	if err != nil {
		t.Fatal(err)
	}
	// Malformed C3P in INFO: 400, and the meeting is as it was.
	ua := siptest.New(t, s.UsersAddr(), &tls.Config{RootCAs: accesstestRoots(t, pki), ServerName: "core1.internal", MinVersion: tls.VersionTLS12})
	if r := ua.Request(sip.INFO, "sip:alice@example.test", uri); r.StatusCode < 400 {
		t.Fatalf("INFO outside the join dialog: %d", r.StatusCode)
	}
	bad := c3p.Cmd("modifyConferenceLock") // a lock without <locked>
	if res := cmd(t, a, bad); res.Code != c3p.Failure || res.Reason != c3p.ReasonBadArgument {
		t.Fatalf("lock without an argument: %+v", res)
	}
	other := c3p.Cmd("getConference")
	other.Keys = &c3p.Keys{ConfEntity: core.ConferenceURI(m.Organizer, "SOMEOTHERMEETING1")}
	if res := cmd(t, a, other); res.Code != c3p.Failure || res.Reason != c3p.ReasonNoConference {
		t.Fatalf("another conference's entity: %+v", res)
	}
	// The late joiner got nothing said before.
	select {
	case ev := <-b.Events():
		if ev.IM != nil {
			t.Fatalf("history reached a late joiner: %+v", ev.IM)
		}
	case <-time.After(300 * time.Millisecond):
	}
	// The organiser deletes the meeting: everyone is removed.
	if res := cmd(t, a, c3p.Cmd("deleteConference")); res.Code != c3p.Success {
		t.Fatalf("deleteConference: %+v", res)
	}
	waitEnded(t, b)
	waitEnded(t, a)
	if _, err := s.Store().Meeting(ctx, m.ID); err == nil {
		t.Fatal("meeting still stored")
	}
}

// A participant whose connection is gone without a BYE leaves the meeting
// once a NOTIFY cannot reach them: the core does not send it to whoever
// holds their old address now (the flow failed), and it is not left on
// the roster either.
func TestFocusParticipantVanishes(t *testing.T) {
	s, pki, _, uri := withMeeting(t, core.MeetingOptions{Organizer: "sip:alice@example.test"}, "alice", "bob", "carol")
	a, err := joinAs(t, s, pki.CAFile(), "sip:alice@example.test", alicePW, uri)
	if err != nil {
		t.Fatal(err)
	}
	pipe := siptest.NewPipe(t, s.UsersAddr())
	b, err := joinVia(t, pipe.Addr(), pki.CAFile(), "sip:bob@example.test", alicePW, uri)
	if err != nil {
		t.Fatal(err)
	}
	until(t, a, "bob joined", func(r confinfo.Roster) bool { return status(r, "sip:bob@example.test") == confinfo.Connected })
	until(t, b, "bob sees himself joined", func(r confinfo.Roster) bool { return status(r, "sip:bob@example.test") == confinfo.Connected })
	time.Sleep(200 * time.Millisecond) // no NOTIFY to bob left in flight
	pipe.Close()                       // bob's connection goes, no BYE, and he cannot come back
	time.Sleep(100 * time.Millisecond)
	if _, err := joinAs(t, s, pki.CAFile(), "sip:carol@example.test", alicePW, uri); err != nil { // a change to tell everyone
		t.Fatal(err)
	}
	start := time.Now()
	until(t, a, "bob removed", func(r confinfo.Roster) bool {
		return status(r, "sip:carol@example.test") == confinfo.Connected && status(r, "sip:bob@example.test") == ""
	})
	t.Logf("bob removed after %v", time.Since(start))
}

// A subscription is refreshed or ended only in its own dialog: a SUBSCRIBE
// with its Call-ID but not its tags (anyone who learnt the Call-ID, no
// credentials needed for an in-dialog request) gets 481, and so do a BYE,
// a C3P command and an IM with the join dialog's Call-ID and the
// participant's tag but not ours; the participant stays and goes on
// getting the roster.
func TestFocusSubscriptionStaysInItsDialog(t *testing.T) {
	s, pki, _, uri := withMeeting(t, core.MeetingOptions{Organizer: "sip:alice@example.test"}, "alice", "bob")
	a, err := joinAs(t, s, pki.CAFile(), "sip:alice@example.test", alicePW, uri)
	if err != nil {
		t.Fatal(err)
	}
	until(t, a, "alice sees herself", func(r confinfo.Roster) bool { return role(r, "sip:alice@example.test") == "organizer" })
	ua := siptest.New(t, s.UsersAddr(), &tls.Config{RootCAs: accesstestRoots(t, pki), ServerName: "core1.internal", MinVersion: tls.VersionTLS12})
	for _, expires := range []string{"0", "600"} {
		// In-dialog, as anyone could send it.
		r := ua.Forged(sip.SUBSCRIBE, "sip:alice@example.test", uri, "forgedtag123", a.Subscription(), "",
			sip.NewHeader("Event", confinfo.Event), sip.NewHeader("Expires", expires))
		if r.StatusCode != 481 {
			t.Fatalf("SUBSCRIBE in a forged dialog with alice's subscription's Call-ID, Expires %s: %d %s, want 481", expires, r.StatusCode, r.Reason)
		}
		// Out of dialog, as bob (authenticated), reusing her Call-ID.
		r = ua.ForgedAs("bob", alicePW, sip.SUBSCRIBE, "sip:bob@example.test", uri, "", a.Subscription(), "",
			sip.NewHeader("Event", confinfo.Event), sip.NewHeader("Expires", expires))
		if r.StatusCode != 481 {
			t.Fatalf("bob's SUBSCRIBE with alice's subscription's Call-ID, Expires %s: %d %s, want 481", expires, r.StatusCode, r.Reason)
		}
	}
	// Her join dialog's Call-ID and her own tag, with any other To tag:
	// no BYE, C3P command or IM in her name.
	callID, fromTag := a.Join()
	lock := `<?xml version="1.0"?><request xmlns="urn:ietf:params:xml:ns:cccp" C3PVersion="1" to="` + uri + `" from="sip:alice@example.test" requestId="1"><modifyConferenceLock><conferenceKeys confEntity="` + uri + `"/><locked>true</locked></modifyConferenceLock></request>`
	for _, m := range []struct {
		method      sip.RequestMethod
		contentType string
		body        string
		want        int
	}{{sip.INFO, "application/cccp+xml", lock, 403}, {sip.MESSAGE, "text/plain", "not alice", 403}, {sip.BYE, "", "", 481}} {
		req := ua.NewRequest(m.method, "sip:alice@example.test", uri)
		req.From().Params.Add("tag", fromTag)
		req.To().Params.Add("tag", "forgedtag123")
		id := sip.CallIDHeader(callID)
		req.AppendHeader(&id)
		if m.body != "" {
			req.AppendHeader(sip.NewHeader("Content-Type", m.contentType))
			req.SetBody([]byte(m.body))
		}
		if r := ua.Send(req, "", ""); r.StatusCode != m.want {
			t.Fatalf("%s in alice's join dialog with a forged To tag: %d %s, want %d", m.method, r.StatusCode, r.Reason, m.want)
		}
	}
	if _, err := joinAs(t, s, pki.CAFile(), "sip:bob@example.test", alicePW, uri); err != nil {
		t.Fatal(err)
	}
	until(t, a, "alice still sees bob arrive", func(r confinfo.Roster) bool { return role(r, "sip:bob@example.test") == "attendee" })
}

// A subscription's Expires is capped at an hour, a huge one included (it
// overflowed into the past: a subscription expired at once, answered with
// a negative Expires).
func TestFocusSubscribeHugeExpires(t *testing.T) {
	s, pki, _, uri := withMeeting(t, core.MeetingOptions{Organizer: "sip:alice@example.test"}, "alice")
	if _, err := joinAs(t, s, pki.CAFile(), "sip:alice@example.test", alicePW, uri); err != nil {
		t.Fatal(err)
	}
	ua := siptest.New(t, s.UsersAddr(), &tls.Config{RootCAs: accesstestRoots(t, pki), ServerName: "core1.internal", MinVersion: tls.VersionTLS12})
	for _, tc := range []struct{ ask, want string }{{"120", "120"}, {"9223372037", "3600"}, {"99999999999999", "3600"}} {
		r := ua.ForgedAs("alice", alicePW, sip.SUBSCRIBE, "sip:alice@example.test", uri, "", "", "",
			sip.NewHeader("Event", confinfo.Event), sip.NewHeader("Expires", tc.ask))
		if got := r.GetHeader("Expires"); r.StatusCode != 200 || got == nil || got.Value() != tc.want {
			t.Fatalf("SUBSCRIBE with Expires %s: %d %s, Expires %v, want 200 with %s", tc.ask, r.StatusCode, r.Reason, got, tc.want)
		}
	}
}

// A participant has one subscription: each new SUBSCRIBE replaces the one
// before, so twenty in a row leave one, and a roster change is notified
// once, on the last (each used to stay, a goroutine and a queue each, and
// every change went out twenty times).
func TestFocusOneSubscriptionPerParticipant(t *testing.T) {
	s, pki, _, uri := withMeeting(t, core.MeetingOptions{Organizer: "sip:alice@example.test"}, "alice", "bob")
	if _, err := joinAs(t, s, pki.CAFile(), "sip:alice@example.test", alicePW, uri); err != nil {
		t.Fatal(err)
	}
	ua := siptest.New(t, s.UsersAddr(), &tls.Config{RootCAs: accesstestRoots(t, pki), ServerName: "core1.internal", MinVersion: tls.VersionTLS12})
	var mu sync.Mutex
	notified := map[string]int{} // Call-ID → NOTIFYs about bob
	ua.Server.OnNotify(func(req *sip.Request, tx sip.ServerTransaction) {
		if strings.Contains(string(req.Body()), "sip:bob@example.test") {
			mu.Lock()
			notified[req.CallID().Value()]++
			mu.Unlock()
		}
		_ = tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
	})
	var last string
	for i := range 20 {
		last = "sub-" + strconv.Itoa(i) + "-" + sip.GenerateTagN(8)
		if r := ua.ForgedAs("alice", alicePW, sip.SUBSCRIBE, "sip:alice@example.test", uri, "", last, "",
			sip.NewHeader("Event", confinfo.Event), sip.NewHeader("Expires", "600")); r.StatusCode != 200 {
			t.Fatalf("SUBSCRIBE %d: %d %s", i, r.StatusCode, r.Reason)
		}
	}
	if _, err := joinAs(t, s, pki.CAFile(), "sip:bob@example.test", alicePW, uri); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		got, n := notified[last], len(notified)
		mu.Unlock()
		if got > 0 {
			time.Sleep(300 * time.Millisecond) // let any other subscription's NOTIFY arrive
			mu.Lock()
			n = len(notified)
			mu.Unlock()
			if n != 1 {
				t.Fatalf("bob's arrival notified on %d subscriptions of alice's, want 1: %v", n, notified)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("bob's arrival not notified on the last subscription; notified: %v (%d)", notified, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A meeting holds at most conferencing.max_participants: past it an
// attendee gets 486 (a guest with the key could otherwise join under any
// number of names, each costing every participant a NOTIFY), the organiser
// still gets in, a participant joining again replaces themself, and a
// place freed by a departure is taken.
func TestFocusMeetingFull(t *testing.T) {
	s, pki, _, uri := withMeetingTuned(t, func(c *core.Config) { c.Conferencing.MaxParticipants = 2 },
		core.MeetingOptions{Organizer: "sip:alice@example.test"}, "alice", "bob", "carol", "dave")
	join := func(name string) (*sipclient.Conference, error) {
		return joinAs(t, s, pki.CAFile(), "sip:"+name+"@example.test", alicePW, uri)
	}
	if _, err := join("bob"); err != nil {
		t.Fatal(err)
	}
	if _, err := join("carol"); err != nil {
		t.Fatal(err)
	}
	if _, err := join("dave"); err == nil || !strings.Contains(err.Error(), "486") {
		t.Fatalf("a third attendee in a meeting for two: %v, want 486", err)
	}
	b, err := join("bob") // his first dialog is replaced
	if err != nil {
		t.Fatalf("bob joining again: %v", err)
	}
	a, err := join("alice")
	if err != nil {
		t.Fatalf("the organiser in a full meeting: %v", err)
	}
	until(t, a, "alice sees three", func(r confinfo.Roster) bool { return len(r.Users) == 3 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b.Leave(ctx)
	until(t, a, "bob gone", func(r confinfo.Roster) bool { return len(r.Users) == 2 })
	if _, err := join("bob"); err == nil || !strings.Contains(err.Error(), "486") {
		t.Fatalf("still full with alice and carol: %v, want 486", err)
	}
}

// The core closes while participants are subscribing: every subscription's
// notifier is waited for or never started (a SUBSCRIBE answered during
// Close started one after the Focus had begun waiting: a WaitGroup Add
// racing its Wait, seen once in CI).
func TestFocusCloseWhileSubscribing(t *testing.T) {
	for round := range 3 {
		s, pki, _, uri := withMeeting(t, core.MeetingOptions{Organizer: "sip:alice@example.test"}, "alice")
		if _, err := joinAs(t, s, pki.CAFile(), "sip:alice@example.test", alicePW, uri); err != nil {
			t.Fatal(err)
		}
		conf := &tls.Config{RootCAs: accesstestRoots(t, pki), ServerName: "core1.internal", MinVersion: tls.VersionTLS12}
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for w := range 4 {
			ua := siptest.New(t, s.UsersAddr(), conf)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 200; i++ {
					select {
					case <-stop:
						return
					default:
					}
					// Errors are expected once the core is closing.
					req := ua.NewRequest(sip.SUBSCRIBE, "sip:alice@example.test", uri)
					id := sip.CallIDHeader(fmt.Sprintf("close-%d-%d-%d", round, w, i))
					req.AppendHeader(&id)
					req.AppendHeader(sip.NewHeader("Event", confinfo.Event))
					req.AppendHeader(sip.NewHeader("Expires", "600"))
					ctx, cancel := context.WithTimeout(context.Background(), time.Second)
					if res, err := ua.Client.Do(ctx, req); err == nil && res.StatusCode == 407 {
						_, _ = ua.Client.DoDigestAuth(ctx, req, res, sipgo.DigestAuth{Username: "alice", Password: alicePW})
					}
					cancel()
				}
			}()
		}
		time.Sleep(time.Duration(50+30*round) * time.Millisecond)
		s.Close()
		close(stop)
		wg.Wait()
	}
}

// A guest's name cannot be taken over: every guest holds the meeting's key,
// so a second join under a connected guest's name gets 403 and the guest
// stays, where it used to replace them (their place, their roster entry,
// and what was sent to them from then on).
func TestFocusGuestNameTaken(t *testing.T) {
	s, pki, m, uri := withMeeting(t, core.MeetingOptions{Organizer: "sip:alice@example.test", Admission: core.AdmitAnonymous}, "alice")
	a, err := joinAs(t, s, pki.CAFile(), "sip:alice@example.test", alicePW, uri)
	if err != nil {
		t.Fatal(err)
	}
	g, err := joinAs(t, s, pki.CAFile(), "sip:grace-1234@anonymous.invalid", m.Key, uri)
	if err != nil {
		t.Fatal(err)
	}
	until(t, a, "alice sees grace", func(r confinfo.Roster) bool { return role(r, "sip:grace-1234@anonymous.invalid") == "attendee" })
	if _, err := joinAs(t, s, pki.CAFile(), "sip:grace-1234@anonymous.invalid", m.Key, uri); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("a second guest under grace's name: %v, want 403", err)
	}
	// Grace is still herself: an IM from alice reaches her.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.IM(ctx, "still there, grace?"); err != nil {
		t.Fatal(err)
	}
	waitIM(t, g, "grace", "sip:alice@example.test", "still there, grace?")
	if _, err := joinAs(t, s, pki.CAFile(), "sip:mallory-99@anonymous.invalid", m.Key, uri); err != nil {
		t.Fatalf("a guest of another name: %v", err)
	}
}

// A participant's group IM is rate-limited (each message goes to everyone
// else, from a goroutine of its own): a burst beyond it gets 503 with
// Retry-After, and the sender may send again a moment later.
func TestFocusGroupIMRate(t *testing.T) {
	s, pki, _, uri := withMeeting(t, core.MeetingOptions{Organizer: "sip:alice@example.test"}, "alice", "bob")
	a, err := joinAs(t, s, pki.CAFile(), "sip:alice@example.test", alicePW, uri)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := joinAs(t, s, pki.CAFile(), "sip:bob@example.test", alicePW, uri); err != nil {
		t.Fatal(err)
	}
	until(t, a, "alice sees bob", func(r confinfo.Roster) bool { return role(r, "sip:bob@example.test") == "attendee" })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sent, limited := 0, 0
	for i := range 60 {
		switch err := a.IM(ctx, "burst "+strconv.Itoa(i)); {
		case err == nil:
			sent++
		case strings.Contains(err.Error(), "503"):
			limited++
		default:
			t.Fatalf("IM %d: %v", i, err)
		}
	}
	if limited == 0 || sent < 20 {
		t.Fatalf("60 IMs at once: %d sent, %d refused 503; want the burst of 20 (and what refills meanwhile) through, the rest refused", sent, limited)
	}
	time.Sleep(1500 * time.Millisecond)
	if err := a.IM(ctx, "after a pause"); err != nil {
		t.Fatalf("IM after a pause: %v", err)
	}
}

// A user's client connects straight to the core: no proxy stands between,
// so a Record-Route in its INVITE or SUBSCRIBE is its own invention. The
// Focus sends in those dialogs over the user's connection and ignores it;
// it took it as the route set and dialled wherever it named (any address
// and port inside, with the core's certificate) for every NOTIFY, IM and
// BYE.
func TestFocusIgnoresUsersRecordRoute(t *testing.T) {
	s, pki, _, uri := withMeeting(t, core.MeetingOptions{Organizer: "sip:alice@example.test"}, "alice", "bob")
	trap, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer trap.Close()
	var dialled atomic.Int32
	go func() {
		for {
			c, err := trap.Accept()
			if err != nil {
				return
			}
			dialled.Add(1)
			c.Close()
		}
	}()
	rr := sip.NewHeader("Record-Route", "<sip:"+trap.Addr().String()+";transport=tls;lr>")
	if _, err := joinAs(t, s, pki.CAFile(), "sip:bob@example.test", alicePW, uri); err != nil {
		t.Fatal(err)
	}
	ua := siptest.New(t, s.UsersAddr(), &tls.Config{RootCAs: accesstestRoots(t, pki), ServerName: "core1.internal", MinVersion: tls.VersionTLS12})
	var notifies atomic.Int32
	ua.Server.OnNotify(func(req *sip.Request, tx sip.ServerTransaction) {
		notifies.Add(1)
		_ = tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
	})
	r := ua.ForgedAs("bob", alicePW, sip.SUBSCRIBE, "sip:bob@example.test", uri, "", "", "",
		sip.NewHeader("Event", confinfo.Event), sip.NewHeader("Expires", "600"), rr)
	if r.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE: %d %s", r.StatusCode, r.Reason)
	}
	// A change to the roster: another NOTIFY.
	if _, err := joinAs(t, s, pki.CAFile(), "sip:alice@example.test", alicePW, uri); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for notifies.Load() < 2 && dialled.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := dialled.Load(); n != 0 {
		t.Fatalf("the core dialled the address in the user's Record-Route %d times", n)
	}
	if n := notifies.Load(); n < 2 {
		t.Fatalf("%d NOTIFYs over the subscriber's connection, want the full state and the change", n)
	}
}

// A participant's role changes (modifyUserRoles) while their own commands
// are being checked against it: the check read the role without the
// Focus's lock, a data race the race detector caught once in CI.
func TestFocusRoleChangesWhileCommanding(t *testing.T) {
	s, pki, _, uri := withMeeting(t, core.MeetingOptions{Organizer: "sip:alice@example.test"}, "alice", "bob")
	a, err := joinAs(t, s, pki.CAFile(), "sip:alice@example.test", alicePW, uri)
	if err != nil {
		t.Fatal(err)
	}
	b, err := joinAs(t, s, pki.CAFile(), "sip:bob@example.test", alicePW, uri)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range 20 {
			change := c3p.Cmd("modifyUserRoles")
			change.User = user("sip:bob@example.test", []string{"presenter", "attendee"}[i%2])
			if res := cmd(t, a, change); res.Code != c3p.Success {
				t.Errorf("role change %d: %+v", i, res)
				return
			}
		}
	})
	wg.Go(func() {
		for i := range 20 {
			if res := cmd(t, b, c3p.Cmd("getConference")); res.Code != c3p.Success {
				t.Errorf("getConference %d: %+v", i, res)
				return
			}
		}
	})
	wg.Wait()
}
