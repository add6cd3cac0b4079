package confinfo_test

import (
	"errors"
	"testing"

	"portcullis/core/confinfo"
)

const conf = "sip:alice@example.test;gruu;opaque=app:conf:focus:id:AB12CD34"

func TestRoundTripAndRoster(t *testing.T) {
	n, yes, no := 2, true, false
	full := &confinfo.Info{Entity: conf, State: confinfo.Full, Version: 1,
		Description: &confinfo.Description{Subject: "Plans"},
		HostInfo:    &confinfo.HostInfo{URI: "sip:alice@example.test"},
		ConfState:   &confinfo.ConfState{UserCount: &n, Active: &yes, Locked: &no},
		Users: &confinfo.Users{Users: []confinfo.User{
			{Entity: "sip:alice@example.test", Roles: []string{"organizer"}, Endpoints: []confinfo.Endpoint{{Entity: "sip:alice@example.test", Status: confinfo.Connected, JoiningMethod: "dialed-in",
				Media: []confinfo.Media{{ID: "1", Type: "message", Status: "sendrecv"}}}}},
			{Entity: "sip:bob@example.test", Roles: []string{"attendee"}},
		}}}
	b := confinfo.Marshal(full)
	got, err := confinfo.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if string(confinfo.Marshal(got)) != string(b) {
		t.Fatalf("not stable:\n%s\n%s", b, confinfo.Marshal(got))
	}
	var r confinfo.Roster
	if err := r.Apply(got); err != nil || len(r.Users) != 2 || r.Version != 1 {
		t.Fatalf("full: %v %+v", err, r)
	}
	part := &confinfo.Info{Entity: conf, State: confinfo.Partial, Version: 2, ConfState: &confinfo.ConfState{Locked: &yes},
		Users: &confinfo.Users{Users: []confinfo.User{{Entity: "sip:bob@example.test", State: confinfo.Deleted}}}}
	if err := r.Apply(part); err != nil || len(r.Users) != 1 || !r.Locked {
		t.Fatalf("partial: %v %+v", err, r)
	}
	// An older full document delivered late changes nothing.
	if err := r.Apply(got); err != nil || r.Version != 2 || len(r.Users) != 1 {
		t.Fatalf("stale full: %v %+v", err, r)
	}
	part.Version = 4
	if err := r.Apply(part); !errors.Is(err, confinfo.ErrGap) {
		t.Fatalf("gap: %v", err)
	}
}

func TestParseRefuses(t *testing.T) {
	for name, body := range map[string]string{
		"not xml":     "x",
		"bad state":   `<conference-info xmlns="urn:ietf:params:xml:ns:conference-info" entity="c" state="weird" version="1"/>`,
		"no entity":   `<conference-info xmlns="urn:ietf:params:xml:ns:conference-info" state="full" version="1"/>`,
		"wrong ns":    `<conference-info xmlns="urn:x" entity="c" state="full" version="1"/>`,
		"bad version": `<conference-info xmlns="urn:ietf:params:xml:ns:conference-info" entity="c" state="full" version="-1"/>`,
	} {
		if _, err := confinfo.Parse([]byte(body)); !errors.Is(err, confinfo.ErrMalformed) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`<conference-info xmlns="urn:ietf:params:xml:ns:conference-info" entity="c" state="full" version="1"><users><user entity="sip:a@b"><roles><entry>attendee</entry></roles></user></users></conference-info>`))
	f.Add([]byte(`<conference-info xmlns="urn:ietf:params:xml:ns:conference-info" entity="c" state="partial" version="2"><users><user entity="sip:a@b" state="deleted"/></users></conference-info>`))
	f.Fuzz(func(t *testing.T, b []byte) {
		i, err := confinfo.Parse(b)
		if err != nil {
			return
		}
		var r confinfo.Roster
		_ = r.Apply(i)
		if _, err := confinfo.Parse(confinfo.Marshal(i)); err != nil {
			t.Fatalf("a parsed document does not parse again: %v", err)
		}
	})
}
