package core_test

import (
	"context"
	"encoding/xml"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"portcullis/access"
	"portcullis/core"
	"portcullis/internal/siptest"
)

func service(t *testing.T, u *siptest.UA, body, contentType string) *sip.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	aor := sip.Uri{Scheme: "sip", User: "alice", Host: "example.test"}
	target := aor
	target.UriParams = sip.HeaderParams{{K: "transport", V: "tls"}}
	req := sip.NewRequest("SERVICE", target)
	req.SetDestination(u.Dest)
	req.AppendHeader(&sip.FromHeader{Address: aor, Params: sip.HeaderParams{{K: "tag", V: sip.GenerateTagN(8)}}})
	req.AppendHeader(&sip.ToHeader{Address: aor})
	req.AppendHeader(sip.NewHeader("Content-Type", contentType))
	req.SetBody([]byte(body))
	res, err := u.Client.Do(ctx, req)
	if err == nil && res.StatusCode == 407 {
		res, err = u.Client.DoDigestAuth(ctx, req, res, sipgo.DigestAuth{Username: "alice", Password: alicePW})
	}
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestMRASService(t *testing.T) {
	s, roots := users(t, "sip:alice@example.test")
	secret, err := access.LoadTURNSecret(s.Config().TURN.SecretFile)
	if err != nil {
		t.Fatal(err)
	}
	// A duration in minutes that overflows as a time.Duration gets the
	// longest allowed, not an expired credential.
	maxMinutes := int(s.Config().TURN.MaxTTL / time.Minute)
	for _, tc := range []struct {
		ask  string
		want int
	}{{"60", 60}, {"4611686018427387904", maxMinutes}} {
		res := service(t, siptest.New(t, s.UsersAddr(), roots), `<request requestID="42" from="sip:alice@example.test" version="1.0" to="sip:mras" xmlns="http://schemas.microsoft.com/2006/09/sip/mrasp"><credentialsRequest credentialsRequestID="7"><identity>sip:alice@example.test</identity><location>internet</location><duration>`+tc.ask+`</duration></credentialsRequest></request>`,
			"application/msrtc-media-relay-auth+xml")
		checkMRASAnswer(t, res, secret, tc.want)
	}
	for _, tc := range []struct {
		body, ct string
		want     int
	}{
		{strings.Replace(string(mustBody()), "sip:alice@example.test</identity>", "sip:bob@example.test</identity>", 1), "application/msrtc-media-relay-auth+xml", 403},
		{"<request", "application/msrtc-media-relay-auth+xml", 400},
		{string(mustBody()), "text/plain", 415},
	} {
		if res := service(t, siptest.New(t, s.UsersAddr(), roots), tc.body, tc.ct); res.StatusCode != tc.want {
			t.Errorf("%q as %s: %d, want %d", tc.body[:min(len(tc.body), 40)], tc.ct, res.StatusCode, tc.want)
		}
	}
}

// checkMRASAnswer checks a 200 to alice's request 42/7: a credential for
// her, valid now, for minutes, and the relay list.
func checkMRASAnswer(t *testing.T, res *sip.Response, secret []byte, minutes int) {
	t.Helper()
	if res.StatusCode != 200 {
		t.Fatalf("SERVICE: %d %s", res.StatusCode, res.Reason)
	}
	var got struct {
		RequestID string `xml:"requestID,attr"`
		Cred      struct {
			ID          string `xml:"credentialsRequestID,attr"`
			Credentials struct {
				Username string `xml:"username"`
				Password string `xml:"password"`
				Duration int    `xml:"duration"`
			} `xml:"credentials"`
			Relays []struct {
				HostName string `xml:"hostName"`
				UDPPort  int    `xml:"udpPort"`
			} `xml:"mediaRelayList>mediaRelay"`
		} `xml:"credentialsResponse"`
	}
	if err := xml.Unmarshal(res.Body(), &got); err != nil {
		t.Fatalf("%v\n%s", err, res.Body())
	}
	c := got.Cred.Credentials
	user, err := access.ParseTURNUsername(c.Username, time.Now())
	if err != nil || user != "sip:alice@example.test" || c.Password != access.TURNPassword(secret, c.Username) || c.Duration != minutes ||
		got.RequestID != "42" || got.Cred.ID != "7" || len(got.Cred.Relays) != 1 || got.Cred.Relays[0].UDPPort != 3478 {
		t.Fatalf("answer %+v (%v), want %d minutes\n%s", got, err, minutes, res.Body())
	}
}

func mustBody() []byte {
	return []byte(`<request requestID="1" from="sip:alice@example.test" version="1.0" to="sip:mras" xmlns="http://schemas.microsoft.com/2006/09/sip/mrasp"><credentialsRequest credentialsRequestID="1"><identity>sip:alice@example.test</identity><location>internet</location><duration>480</duration></credentialsRequest></request>`)
}

func FuzzParseMRAS(f *testing.F) {
	f.Add(mustBody())
	f.Add([]byte(`<request xmlns="http://schemas.microsoft.com/2006/09/sip/mrasp"><credentialsRequest/></request>`))
	f.Add([]byte(`<!DOCTYPE x [<!ENTITY a "aaaa">]><request>&a;</request>`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := core.ParseMRAS(b)
		if err == nil && r.Cred.Identity == "" {
			t.Fatal("accepted without an identity")
		}
	})
}
