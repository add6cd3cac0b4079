package c3p_test

import (
	"errors"
	"strings"
	"testing"

	"portcullis/core/c3p"
)

const conf = "sip:alice@example.test;gruu;opaque=app:conf:focus:id:AB12CD34"

// Every command survives a round trip in the shapes of PROTOCOLS.md.
func TestRoundTrip(t *testing.T) {
	yes := true
	for _, name := range c3p.Commands {
		c := c3p.Cmd(name)
		c.Keys = &c3p.Keys{ConfEntity: conf}
		switch name {
		case "addConference", "modifyConference":
			c.Keys = nil
			c.Organizer, c.Subject, c.Admission, c.Lobby, c.Expires = "sip:alice@example.test", "Plans", "anonymous", &yes, "2026-12-31"
		case "modifyConferenceLock":
			c.Locked = &yes
		case "addUser", "deleteUser", "modifyUser", "modifyUserRoles", "setUserAccess":
			c.User = &c3p.User{Entity: "sip:bob@example.test", DisplayName: "Bob", Roles: []string{"presenter"}}
			c.Access = "admit"
		case "addEndpointMedia", "deleteEndpointMedia":
			c.Media = &c3p.Media{ID: "chat-1", Type: "chat", Status: "sendrecv"}
		case "ping":
			c.MCU = &c3p.MCU{ID: "im-1", Type: "chat", URI: "https://203.0.113.10:443/", Load: 3}
		}
		b := c3p.Marshal(c3p.NewRequest("sip:alice@example.test", conf, "7", c))
		r, err := c3p.Parse(b)
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, b)
		}
		if r.Command.Name() != name || r.RequestID != "7" || r.To != conf || r.Version != "1" {
			t.Fatalf("%s: %+v", name, r)
		}
		if again := c3p.Marshal(r); string(again) != string(b) {
			t.Fatalf("%s: not stable:\n%s\n%s", name, b, again)
		}
		res := c3p.Reply(r, c3p.Failure, c3p.ReasonForbidden, "only presenters may do that")
		rb := c3p.Marshal(res)
		back, err := c3p.ParseResponse(rb)
		if err != nil || back.Code != c3p.Failure || back.Reason != c3p.ReasonForbidden || back.RequestID != "7" || back.Result.XMLName.Local != name || back.Result.ErrorText == "" {
			t.Fatalf("%s response: %+v %v\n%s", name, back, err, rb)
		}
	}
}

// The lock and addUser shapes of PROTOCOLS.md, as another client writes them.
func TestParseProtocolShapes(t *testing.T) {
	lock := `<request xmlns="urn:ietf:params:xml:ns:cccp" xmlns:mscp="http://schemas.microsoft.com/rtc/2005/08/cccpextensions" C3PVersion="1" to="` + conf + `" from="sip:alice@example.test" requestId="3"><modifyConferenceLock><conferenceKeys confEntity="` + conf + `"/><locked>true</locked></modifyConferenceLock></request>`
	r, err := c3p.Parse([]byte(lock))
	if err != nil || r.Command.Name() != "modifyConferenceLock" || r.Command.Locked == nil || !*r.Command.Locked || r.Command.Keys.ConfEntity != conf {
		t.Fatalf("lock: %+v %v", r, err)
	}
	add := `<request xmlns="urn:ietf:params:xml:ns:cccp" C3PVersion="1" to="` + conf + `" from="sip:alice@example.test" requestId="4"><addUser><conferenceKeys confEntity="` + conf + `"/><user entity="sip:u@d"><roles><entry>attendee</entry></roles></user></addUser></request>`
	r, err = c3p.Parse([]byte(add))
	if err != nil || r.Command.User == nil || r.Command.User.Entity != "sip:u@d" || len(r.Command.User.Roles) != 1 || r.Command.User.Roles[0] != "attendee" {
		t.Fatalf("addUser: %+v %v", r, err)
	}
}

func TestParseRefuses(t *testing.T) {
	for name, body := range map[string]string{
		"not xml":        "hello",
		"wrong element":  `<response xmlns="urn:ietf:params:xml:ns:cccp" requestId="1" code="success"/>`,
		"wrong ns":       `<request xmlns="urn:other" requestId="1"><ping/></request>`,
		"no requestId":   `<request xmlns="urn:ietf:params:xml:ns:cccp"><ping/></request>`,
		"no command":     `<request xmlns="urn:ietf:params:xml:ns:cccp" requestId="1"></request>`,
		"huge":           `<request xmlns="urn:ietf:params:xml:ns:cccp" requestId="1"><ping>` + strings.Repeat("x", c3p.MaxSize) + `</ping></request>`,
		"unclosed":       `<request xmlns="urn:ietf:params:xml:ns:cccp" requestId="1"><ping>`,
		"long requestId": `<request xmlns="urn:ietf:params:xml:ns:cccp" requestId="` + strings.Repeat("1", 65) + `"><ping/></request>`,
	} {
		if _, err := c3p.Parse([]byte(body)); !errors.Is(err, c3p.ErrMalformed) {
			t.Errorf("%s: %v", name, err)
		}
	}
	r, err := c3p.Parse([]byte(`<request xmlns="urn:ietf:params:xml:ns:cccp" requestId="1"><launchRockets/></request>`))
	if err != nil || c3p.Known(r.Command.Name()) {
		t.Fatalf("unknown command: parsed %v, known %v", err, c3p.Known(r.Command.Name()))
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`<request xmlns="urn:ietf:params:xml:ns:cccp" C3PVersion="1" to="x" from="y" requestId="3"><modifyConferenceLock><conferenceKeys confEntity="c"/><locked>true</locked></modifyConferenceLock></request>`))
	f.Add([]byte(`<request xmlns="urn:ietf:params:xml:ns:cccp" requestId="4"><addUser><user entity="sip:u@d"><roles><entry>attendee</entry></roles></user></addUser></request>`))
	f.Add([]byte(`<response xmlns="urn:ietf:params:xml:ns:cccp" requestId="1" code="failure" reason="forbidden"><ping/></response>`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := c3p.Parse(b); err == nil {
			if _, err := c3p.Parse(c3p.Marshal(r)); err != nil {
				t.Fatalf("a parsed request does not parse again: %v", err)
			}
		}
		c3p.ParseResponse(b)
	})
}
