package core_test

import (
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"portcullis/access/accesstest"
	"portcullis/core"
	"portcullis/core/c3p"
	"portcullis/core/confinfo"
)

func chatMedia(r confinfo.Roster, entity string) string {
	u, ok := r.Users[entity]
	if !ok || len(u.Endpoints) == 0 || len(u.Endpoints[0].Media) == 0 {
		return ""
	}
	return u.Endpoints[0].Media[0].ID
}

// Two IM MCUs report by heartbeat; meetings go to the least loaded; when
// one stops reporting its meeting moves to the other (the roster shows new
// media), and when none is left the chat ends (the roster shows none).
func TestConferencingServerFactory(t *testing.T) {
	s, pki, _ := startCore(t, func(c *core.Config) {
		c.Conferencing.IMMCUs, c.Conferencing.HeartbeatInterval, c.Conferencing.HeartbeatMisses = 2, 100*time.Millisecond, 2
	})
	ctx := context.Background()
	for _, u := range []string{"alice", "bob", "carol"} {
		if err := core.AddUser(ctx, s.Store(), "sip:"+u+"@example.test", alicePW); err != nil {
			t.Fatal(err)
		}
	}
	f := core.NewFactory(s.Store())
	m1, _ := f.Create(ctx, core.MeetingOptions{Organizer: "sip:alice@example.test"})
	m2, _ := f.Create(ctx, core.MeetingOptions{Organizer: "sip:carol@example.test"})
	const alice, bob = "sip:alice@example.test", "sip:bob@example.test"
	a, err := joinAs(t, s, pki.CAFile(), alice, alicePW, core.ConferenceURI(m1.Organizer, m1.ID))
	if err != nil {
		t.Fatal(err)
	}
	b, err := joinAs(t, s, pki.CAFile(), bob, alicePW, core.ConferenceURI(m1.Organizer, m1.ID))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := joinAs(t, s, pki.CAFile(), "sip:carol@example.test", alicePW, core.ConferenceURI(m2.Organizer, m2.ID)); err != nil {
		t.Fatal(err)
	}
	mcus := s.IMMCUs()
	if len(mcus) != 2 || !slices.Contains(mcus[0].Meetings(), m1.ID) || !slices.Contains(mcus[1].Meetings(), m2.ID) {
		t.Fatalf("provisioning: %v %v", mcus[0].Meetings(), mcus[1].Meetings())
	}
	until(t, a, "bob in chat", func(r confinfo.Roster) bool { return chatMedia(r, bob) != "" })
	before := chatMedia(a.Roster(), bob)

	// im-1 stops reporting: meeting 1 moves to im-2, the roster says so.
	mcus[0].Stop()
	until(t, a, "moved", func(r confinfo.Roster) bool { m := chatMedia(r, bob); return m != "" && m != before })
	if !slices.Contains(mcus[1].Meetings(), m1.ID) {
		t.Fatalf("im-2 hosts %v", mcus[1].Meetings())
	}
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := b.IM(ictx, "after the move"); err != nil {
		t.Fatal(err)
	}
	waitIM(t, a, "alice", bob, "after the move")

	// im-2 stops too: the chat ends, in the roster and for IM.
	mcus[1].Stop()
	until(t, a, "chat ended", func(r confinfo.Roster) bool { return chatMedia(r, bob) == "" && chatMedia(r, alice) == "" })
	if err := b.IM(ictx, "anyone?"); err == nil || !strings.Contains(err.Error(), "403") && !strings.Contains(err.Error(), "503") {
		t.Fatalf("IM with no MCU: %v", err)
	}
}

// The heartbeat endpoint takes C3P ping with <mcu> from internal-CA
// clients only, and an MCU's reports from the certificate it first
// reported with while it is alive.
func TestMCUHeartbeatEndpoint(t *testing.T) {
	s, pki, _ := startCore(t)
	url := "https://" + s.HTTPSAddr() + "/v1/c3p"
	edge := accesstest.Material(t, pki.Node(t, "mcu1.internal"))
	cl := client(edge, edge.Roots)
	ping := c3p.Cmd("ping")
	ping.MCU = &c3p.MCU{ID: "av-1", Type: "audio-video", URI: "https://203.0.113.20:8443/", Load: 2}
	body := string(c3p.Marshal(c3p.NewRequest("mcu:av-1", url, "1", ping)))
	res, err := cl.Post(url, c3p.ContentType, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("heartbeat: %d", res.StatusCode)
	}
	for _, tc := range []struct {
		ct, body string
		want     int
	}{
		{c3p.ContentType, "<request>broken", 400},
		{"application/json", body, 415},
	} {
		res, err := cl.Post(url, tc.ct, strings.NewReader(tc.body))
		if err != nil || res.StatusCode != tc.want {
			t.Fatalf("%s %q: %v %v", tc.ct, tc.body, res.StatusCode, err)
		}
		res.Body.Close()
	}
	// An MCU is its reporter's while alive: another certificate's reports
	// for it (av-1, or the core's own IM MCU) are refused, the owner's
	// are not.
	other := accesstest.Material(t, pki.Node(t, "mcu2.internal"))
	for _, tc := range []struct {
		cl   *http.Client
		id   string
		want string
	}{{client(other, other.Roots), "av-1", c3p.Failure}, {client(other, other.Roots), "im-1", c3p.Failure}, {cl, "av-1", c3p.Success}, {client(other, other.Roots), "av-2", c3p.Success}} {
		p := c3p.Cmd("ping")
		p.MCU = &c3p.MCU{ID: tc.id, Type: "audio-video", URI: "https://203.0.113.66:8443/", Load: 0}
		res, err := tc.cl.Post(url, c3p.ContentType, strings.NewReader(string(c3p.Marshal(c3p.NewRequest("mcu:"+tc.id, url, "2", p)))))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		cr, err := c3p.ParseResponse(b)
		if err != nil || cr.Code != tc.want || (tc.want == c3p.Failure && cr.Reason != c3p.ReasonForbidden) {
			t.Fatalf("report for %s: %+v %v, want %s", tc.id, cr, err, tc.want)
		}
	}
	res, err = cl.Get(url)
	if err != nil || res.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET: %v", err)
	}
	res.Body.Close()
	if _, err := client(nil, edge.Roots).Post(url, c3p.ContentType, strings.NewReader(body)); err == nil {
		t.Fatal("heartbeat without a client certificate accepted")
	}
}
