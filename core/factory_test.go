package core_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"portcullis/access/accesstest"
	"portcullis/core"
	"portcullis/core/c3p"
	"portcullis/internal/siptest"
)

// c3pTo sends a C3P request in a SIP SERVICE (INFO for a Focus) to target
// as user, answering the digest challenge, and returns the SIP response
// and the C3P response in it.
func c3pTo(t *testing.T, u *siptest.UA, method sip.RequestMethod, user, target string, c c3p.Command) (*sip.Response, *c3p.Response) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var turi sip.Uri
	if err := sip.ParseUri(target, &turi); err != nil {
		t.Fatal(err)
	}
	from := sip.Uri{Scheme: "sip", User: strings.TrimPrefix(strings.Split(user, "@")[0], "sip:"), Host: "example.test"}
	req := sip.NewRequest(method, turi)
	req.SetDestination(u.Dest)
	req.SetTransport("TLS")
	req.AppendHeader(&sip.FromHeader{Address: from, Params: sip.HeaderParams{{K: "tag", V: sip.GenerateTagN(8)}}})
	req.AppendHeader(&sip.ToHeader{Address: turi})
	req.AppendHeader(sip.NewHeader("Content-Type", c3p.ContentType))
	req.SetBody(c3p.Marshal(c3p.NewRequest(user, target, "1", c)))
	res, err := u.Client.Do(ctx, req)
	if err == nil && res.StatusCode == 407 {
		res, err = u.Client.DoDigestAuth(ctx, req, res, sipgo.DigestAuth{Username: from.User, Password: alicePW})
	}
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 {
		return res, nil
	}
	cr, err := c3p.ParseResponse(res.Body())
	if err != nil {
		t.Fatalf("C3P response: %v\n%s", err, res.Body())
	}
	return res, cr
}

func TestFocusFactoryOverSIP(t *testing.T) {
	s, roots := users(t, "sip:alice@example.test", "sip:bob@example.test")
	ua := siptest.New(t, s.UsersAddr(), roots)
	factory := core.FactoryURI("sip:alice@example.test")
	yes := true

	add := c3p.Cmd("addConference")
	add.Subject, add.Admission, add.Lobby, add.Expires = "Plans", "anonymous", &yes, "2099-12-31"
	_, res := c3pTo(t, ua, "SERVICE", "sip:alice@example.test", factory, add)
	if res == nil || res.Code != c3p.Success || res.Result.Keys == nil || len(res.Result.Keys.ConferenceKey) != 8 {
		t.Fatalf("addConference: %+v", res)
	}
	uri := res.Result.Keys.ConfEntity
	id, ok := core.MeetingID(uri)
	if !ok || !strings.HasPrefix(uri, "sip:alice@example.test;gruu;opaque=app:conf:focus:id:") {
		t.Fatalf("conference URI %q", uri)
	}
	m, err := s.Store().Meeting(context.Background(), id)
	if err != nil || m.Admission != "anonymous" || !m.Lobby || m.Subject != "Plans" || m.Key != res.Result.Keys.ConferenceKey {
		t.Fatalf("stored %+v %v", m, err)
	}

	// Meetings are created for oneself; bad arguments are C3P failures.
	other := c3p.Cmd("addConference")
	other.Organizer = "sip:bob@example.test"
	if _, res := c3pTo(t, ua, "SERVICE", "sip:alice@example.test", factory, other); res.Code != c3p.Failure || res.Reason != c3p.ReasonForbidden {
		t.Fatalf("for someone else: %+v", res)
	}
	bad := c3p.Cmd("addConference")
	bad.Admission = "everyone"
	if _, res := c3pTo(t, ua, "SERVICE", "sip:alice@example.test", factory, bad); res.Code != c3p.Failure || res.Reason != c3p.ReasonBadArgument {
		t.Fatalf("bad admission: %+v", res)
	}
	if _, res := c3pTo(t, ua, "SERVICE", "sip:alice@example.test", factory, c3p.Cmd("launchRockets")); res.Code != c3p.Failure || res.Reason != c3p.ReasonNotSupported {
		t.Fatalf("unknown command: %+v", res)
	}

	// getConferences lists the organiser's own.
	_, res = c3pTo(t, ua, "SERVICE", "sip:alice@example.test", factory, c3p.Cmd("getConferences"))
	if res.Code != c3p.Success || len(res.Result.Conferences) != 1 || res.Result.Conferences[0].Entity != uri {
		t.Fatalf("getConferences: %+v", res)
	}
	if _, res := c3pTo(t, ua, "SERVICE", "sip:bob@example.test", core.FactoryURI("sip:bob@example.test"), c3p.Cmd("getConferences")); len(res.Result.Conferences) != 0 {
		t.Fatalf("bob sees alice's meetings: %+v", res.Result.Conferences)
	}
	// Only the organiser deletes.
	del := c3p.Cmd("deleteConference")
	del.Keys = &c3p.Keys{ConfEntity: uri}
	if _, res := c3pTo(t, ua, "SERVICE", "sip:bob@example.test", core.FactoryURI("sip:bob@example.test"), del); res.Code != c3p.Failure || res.Reason != c3p.ReasonForbidden {
		t.Fatalf("bob deletes: %+v", res)
	}
	if _, res := c3pTo(t, ua, "SERVICE", "sip:alice@example.test", factory, del); res.Code != c3p.Success {
		t.Fatalf("delete: %+v", res)
	}
	if _, res := c3pTo(t, ua, "SERVICE", "sip:alice@example.test", factory, del); res.Code != c3p.Failure || res.Reason != c3p.ReasonNoConference {
		t.Fatalf("delete again: %+v", res)
	}

	// Malformed C3P: 400; a SERVICE with C3P not to the factory: 404.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var furi sip.Uri
	_ = sip.ParseUri(factory, &furi)
	req := sip.NewRequest("SERVICE", furi)
	req.SetDestination(ua.Dest)
	req.SetTransport("TLS")
	req.AppendHeader(&sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: "alice", Host: "example.test"}, Params: sip.HeaderParams{{K: "tag", V: "x1"}}})
	req.AppendHeader(&sip.ToHeader{Address: furi})
	req.AppendHeader(sip.NewHeader("Content-Type", c3p.ContentType))
	req.SetBody([]byte("<request>broken"))
	r, err := ua.Client.Do(ctx, req)
	if err == nil && r.StatusCode == 407 {
		r, err = ua.Client.DoDigestAuth(ctx, req, r, sipgo.DigestAuth{Username: "alice", Password: alicePW})
	}
	if err != nil || r.StatusCode != 400 {
		t.Fatalf("malformed C3P: %v %v", r, err)
	}
	if r, _ := c3pTo(t, ua, "SERVICE", "sip:alice@example.test", "sip:alice@example.test", c3p.Cmd("getConferences")); r.StatusCode != 404 {
		t.Fatalf("C3P SERVICE not to the factory: %d", r.StatusCode)
	}
}

func TestFocusFactoryHTTPS(t *testing.T) {
	s, pki, _ := startCore(t)
	if err := core.AddUser(context.Background(), s.Store(), "sip:alice@example.test", alicePW); err != nil {
		t.Fatal(err)
	}
	ops := accesstest.Material(t, pki.Node(t, "ops.internal"))
	cl := client(ops, ops.Roots)
	url := "https://" + s.HTTPSAddr() + "/v1/meetings"
	res, err := cl.Post(url, "application/json", strings.NewReader(`{"organizer":"sip:alice@example.test","admission":"open","expires":"2099-01-01"}`))
	if err != nil {
		t.Fatal(err)
	}
	var m core.MeetingJSON
	if err := json.NewDecoder(res.Body).Decode(&m); err != nil || res.StatusCode != 201 || m.Admission != "open" || m.Expires == nil || !strings.Contains(m.URI, m.ID) {
		t.Fatalf("create: %d %+v %v", res.StatusCode, m, err)
	}
	res.Body.Close()
	for body, want := range map[string]int{
		`{"organizer":"sip:nobody@example.test"}`:                       400,
		`{"organizer":"sip:alice@example.test","expires":"2001-01-01"}`: 400,
		`{"organizer":"sip:alice@example.test","admission":"all"}`:      400,
		`{"organizer":"sip:alice@example.test","colour":"blue"}`:        400,
	} {
		res, err := cl.Post(url, "application/json", strings.NewReader(body))
		if err != nil || res.StatusCode != want {
			t.Fatalf("%s: %v %v", body, res.StatusCode, err)
		}
		res.Body.Close()
	}
	res, err = cl.Get(url + "?organizer=sip:alice@example.test")
	if err != nil {
		t.Fatal(err)
	}
	var list []core.MeetingJSON
	if err := json.NewDecoder(res.Body).Decode(&list); err != nil || len(list) != 1 || list[0].ID != m.ID {
		t.Fatalf("list: %+v %v", list, err)
	}
	res.Body.Close()
	for i, want := range []int{204, 404} {
		req, _ := http.NewRequest(http.MethodDelete, url+"/"+m.ID, nil)
		res, err := cl.Do(req)
		if err != nil || res.StatusCode != want {
			t.Fatalf("delete %d: %v %v", i, res.StatusCode, err)
		}
		res.Body.Close()
	}
	// Without a client certificate from the internal CA: no TLS session.
	if _, err := client(nil, ops.Roots).Get(url); err == nil {
		t.Fatal("meetings API answered a client without a certificate")
	}
}

// A user schedules at most conferencing.max_meetings_per_organizer
// meetings over SIP, requests sent together included; past it a C3P
// failure (forbidden), and a deleted one frees a place. Operators are not
// bound.
func TestFocusFactoryMeetingsPerOrganizer(t *testing.T) {
	s, pki, _ := startCore(t, func(c *core.Config) { c.Conferencing.MaxMeetingsPerOrganizer = 3 })
	if err := core.AddUser(context.Background(), s.Store(), "sip:alice@example.test", alicePW); err != nil {
		t.Fatal(err)
	}
	roots := &tls.Config{RootCAs: accesstestRoots(t, pki), ServerName: "core1.internal", MinVersion: tls.VersionTLS12}
	factory := core.FactoryURI("sip:alice@example.test")
	results := make([]*c3p.Response, 8)
	var wg sync.WaitGroup
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, results[i] = c3pTo(t, siptest.New(t, s.UsersAddr(), roots), "SERVICE", "sip:alice@example.test", factory, c3p.Cmd("addConference"))
		}()
	}
	wg.Wait()
	made, refused := 0, 0
	var uri string
	for _, res := range results {
		switch {
		case res != nil && res.Code == c3p.Success:
			made++
			uri = res.Result.Keys.ConfEntity
		case res != nil && res.Code == c3p.Failure && res.Reason == c3p.ReasonForbidden:
			refused++
		}
	}
	if made != 3 || refused != 5 {
		t.Fatalf("8 addConference at once with a cap of 3: %d made, %d refused (forbidden)", made, refused)
	}
	ua := siptest.New(t, s.UsersAddr(), roots)
	del := c3p.Cmd("deleteConference")
	del.Keys = &c3p.Keys{ConfEntity: uri}
	if _, res := c3pTo(t, ua, "SERVICE", "sip:alice@example.test", factory, del); res.Code != c3p.Success {
		t.Fatalf("delete: %+v", res)
	}
	if _, res := c3pTo(t, ua, "SERVICE", "sip:alice@example.test", factory, c3p.Cmd("addConference")); res.Code != c3p.Success {
		t.Fatalf("after a delete: %+v", res)
	}
	if _, err := core.NewFactory(s.Store()).Create(context.Background(), core.MeetingOptions{Organizer: "sip:alice@example.test"}); err != nil {
		t.Fatalf("an operator's fourth meeting: %v", err)
	}
}
