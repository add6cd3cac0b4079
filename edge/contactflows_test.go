package edge

import (
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

func TestContactFlows(t *testing.T) {
	parse := func(s string) *sip.Request {
		t.Helper()
		m, err := sip.ParseMessage([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return m.(*sip.Request)
	}
	reply := func(contacts string) *sip.Response {
		t.Helper()
		m, err := sip.ParseMessage([]byte("SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS 127.0.0.1;branch=z9hG4bKx\r\nTo: <sip:alice@example.test>;tag=1\r\nFrom: <sip:alice@example.test>;tag=2\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n" + contacts + "Content-Length: 0\r\n\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		return m.(*sip.Response)
	}
	register := parse("REGISTER sip:Example.TEST SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1;branch=z9hG4bKx\r\nTo: <sip:alice@Example.TEST>\r\nFrom: <sip:alice@example.test>;tag=2\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@198.51.100.7:5061;transport=tls>\r\nContent-Length: 0\r\n\r\n")
	aor := sip.Uri{Scheme: "sip", User: "alice", Host: "example.test"}
	contact := sip.Uri{Scheme: "sip", User: "alice", Host: "198.51.100.7", Port: 5061}
	other := sip.Uri{Scheme: "sip", User: "alice", Host: "198.51.100.8", Port: 5061}
	now := time.Now()
	c := newContactFlows(2)

	// The answer lists the contact asked for and another device's: only the
	// one asked for is learned from this connection.
	c.learn(register, reply("Contact: <sip:alice@198.51.100.7:5061;transport=tls>;expires=60\r\nContact: <sip:alice@198.51.100.8:5061>;expires=60\r\n"), "127.0.0.1:1000", now)
	if f, ok := c.lookup(aor, contact, now); !ok || f != "127.0.0.1:1000" {
		t.Fatalf("lookup: %q %v", f, ok)
	}
	if _, ok := c.lookup(aor, other, now); ok {
		t.Fatal("a contact this connection did not register was learned")
	}
	if _, ok := c.lookup(sip.Uri{User: "carol", Host: "example.test"}, contact, now); ok {
		t.Fatal("found under another AOR")
	}
	if _, ok := c.lookup(aor, contact, now.Add(61*time.Second)); ok {
		t.Fatal("found after its expiry")
	}
	// Registered again from a new connection: the new one.
	c.learn(register, reply("Contact: <sip:alice@198.51.100.7:5061;transport=tls>;expires=60\r\n"), "127.0.0.1:2000", now)
	if f, _ := c.lookup(aor, contact, now); f != "127.0.0.1:2000" {
		t.Fatalf("after registering again: %q", f)
	}
	// Unregistered (the answer no longer lists it): gone.
	c.learn(register, reply(""), "127.0.0.1:2000", now)
	if _, ok := c.lookup(aor, contact, now); ok {
		t.Fatal("found after unregistering")
	}
	// "Contact: *" ends them all.
	c.learn(register, reply("Contact: <sip:alice@198.51.100.7:5061;transport=tls>;expires=60\r\n"), "127.0.0.1:2000", now)
	c.learn(parse("REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1;branch=z9hG4bKx\r\nTo: <sip:alice@example.test>\r\nFrom: <sip:alice@example.test>;tag=2\r\nCall-ID: c\r\nCSeq: 2 REGISTER\r\nContact: *\r\nExpires: 0\r\nContent-Length: 0\r\n\r\n"), reply(""), "127.0.0.1:2000", now)
	if _, ok := c.lookup(aor, contact, now); ok {
		t.Fatal("found after Contact: *")
	}
	// The cap: expired entries make room, live ones do not.
	for i, flow := range []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"} {
		r := parse("REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1;branch=z9hG4bKx\r\nTo: <sip:u" + flow[len(flow)-1:] + "@example.test>\r\nFrom: <sip:u@example.test>;tag=2\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContact: <sip:u@198.51.100.9:5061>\r\nContent-Length: 0\r\n\r\n")
		c.learn(r, reply("Contact: <sip:u@198.51.100.9:5061>;expires=60\r\n"), flow, now.Add(time.Duration(i)*time.Second))
	}
	if len(c.m) != 2 {
		t.Fatalf("%d entries over a cap of 2", len(c.m))
	}
	r := parse("REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1;branch=z9hG4bKx\r\nTo: <sip:v@example.test>\r\nFrom: <sip:v@example.test>;tag=2\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContact: <sip:v@198.51.100.9:5061>\r\nContent-Length: 0\r\n\r\n")
	c.learn(r, reply("Contact: <sip:v@198.51.100.9:5061>;expires=60\r\n"), "127.0.0.1:4", now.Add(2*time.Minute))
	if _, ok := c.lookup(sip.Uri{User: "v", Host: "example.test"}, sip.Uri{User: "v", Host: "198.51.100.9", Port: 5061}, now.Add(2*time.Minute)); !ok {
		t.Fatal("no room made by expired entries")
	}
}
