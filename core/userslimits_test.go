package core_test

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"portcullis/core"
)

// The users listener takes connections from anyone on the internal
// network before they authenticate, so it is capped like the edge's: per
// source address and in all, a silent connection is closed after the idle
// timeout, and a SIP message trickled in must be complete within the
// message timeout. It had no limit at all: one machine inside could hold
// every descriptor of the core (its edges' connections too) with idle
// TLS connections.
func TestUsersListenerLimits(t *testing.T) {
	s, pki, _ := startCore(t, func(c *core.Config) {
		c.SIP.UsersLimits = core.UsersLimits{ConnectionsPerAddress: 3, MaxConnections: 5, IdleTimeout: time.Second, MessageTimeout: 1500 * time.Millisecond}
	})
	conf := &tls.Config{RootCAs: accesstestRoots(t, pki), ServerName: "core1.internal", MinVersion: tls.VersionTLS12}
	dial := func(from string) (*tls.Conn, error) {
		c := tls.Client(dialFrom(t, from, s.UsersAddr()), conf)
		return c, c.Handshake()
	}
	// open reports whether the core keeps c open: an OPTIONS is answered.
	open := func(c *tls.Conn) bool {
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.WriteString(c, "OPTIONS sip:core1.internal SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK-"+strings.ReplaceAll(c.LocalAddr().String(), ":", "-")+
			"\r\nFrom: <sip:probe@example.test>;tag=1\r\nTo: <sip:core1.internal>\r\nCall-ID: "+c.LocalAddr().String()+"\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"); err != nil {
			return false
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		return err == nil && strings.HasPrefix(line, "SIP/2.0 ")
	}

	// Three from one address; a fourth is closed.
	var conns []*tls.Conn
	for i := range 4 {
		c, err := dial("127.0.0.1")
		if err != nil {
			if i == 3 {
				break // closed during the handshake: refused too
			}
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	for i, c := range conns[:3] {
		if !open(c) {
			t.Fatalf("connection %d of 3 from one address was not served", i)
		}
	}
	if len(conns) == 4 && open(conns[3]) {
		t.Fatal("a fourth connection from one address was served")
	}
	// Two more from another address fill the listener (five); a sixth,
	// from a third address, is closed.
	for i := range 2 {
		c, err := dial("127.0.0.2")
		if err != nil || !open(c) {
			t.Fatalf("connection %d from 127.0.0.2: %v", i, err)
		}
	}
	if c, err := dial("127.0.0.3"); err == nil && open(c) {
		t.Fatal("a connection past the listener's cap was served")
	}

	// Silent connections are closed after the idle timeout, which frees
	// the places.
	time.Sleep(2500 * time.Millisecond)
	for i, c := range conns[:3] {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Fatalf("connection %d still open after twice the idle timeout (%v)", i, err)
		}
	}
	slow, err := dial("127.0.0.1")
	if err != nil {
		t.Fatalf("a connection after the idle ones were closed: %v", err)
	}
	// A message trickled one byte every 300 ms (each byte restarts the
	// idle timeout) is cut off at the message timeout.
	start := time.Now()
	msg := "OPTIONS sip:core1.internal SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK-slow\r\n"
	for i := 0; i < len(msg) && time.Since(start) < 6*time.Second; i++ {
		if _, err := slow.Write([]byte{msg[i]}); err != nil {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	_ = slow.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := slow.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("a message trickled for %s was not cut off (%v)", time.Since(start).Round(time.Millisecond), err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded)
}

// The mutual-TLS listener (sip.limits) and the HTTPS API (https.limits)
// are capped too, handshakes in progress included: anyone who reaches
// them can open connections that the handshake refuses only after up to a
// timeout, and there was no bound on how many.
func TestListenerCapsBeforeHandshake(t *testing.T) {
	for _, tc := range []struct {
		name string
		tune func(*core.Config)
		addr func(*core.Server) string
	}{
		{"sip.limits", func(c *core.Config) {
			c.SIP.Limits.ConnectionsPerAddress, c.SIP.Limits.MaxConnections = 2, 4
			c.SIP.HandshakeTimeout = time.Second
		}, func(s *core.Server) string { a, _ := s.Addr(); return a }},
		// The core's own IM MCU reports over HTTPS from 127.0.0.1 (a
		// connection kept alive): the test's come from other addresses.
		{"https.limits", func(c *core.Config) {
			c.HTTPS.Limits.ConnectionsPerAddress, c.HTTPS.Limits.MaxConnections = 2, 4
		}, (*core.Server).HTTPSAddr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _, _ := startCore(t, tc.tune)
			checkCaps(t, tc.addr(s), tc.name == "sip.limits")
		})
	}
}

// checkCaps checks caps of 2 per address and 4 in all (one may be taken by
// the core itself) on a TLS listener at addr, with connections from
// 127.0.0.11-14 that never start their handshake; timeouts says whether to
// wait for the listener's 1 s handshake timeout to free them.
func checkCaps(t *testing.T, addr string, timeouts bool) {
	t.Helper()
	dial := func(from string) net.Conn { return dialFrom(t, from, addr) }
	// held says whether the listener keeps c open (no TLS from us: it
	// waits for the handshake) for d.
	held := func(c net.Conn, d time.Duration) bool {
		_ = c.SetReadDeadline(time.Now().Add(d))
		_, err := c.Read(make([]byte, 1))
		return isTimeout(err)
	}
	a1, a2 := dial("127.0.0.11"), dial("127.0.0.11")
	if !held(a1, 200*time.Millisecond) || !held(a2, 200*time.Millisecond) {
		t.Fatal("the first two connections from one address were not held for their handshakes")
	}
	if held(dial("127.0.0.11"), 500*time.Millisecond) {
		t.Fatal("a third connection from one address was held")
	}
	if !held(dial("127.0.0.12"), 200*time.Millisecond) {
		t.Fatal("a connection from another address was not held")
	}
	// The fourth place: the core's own connection, or one of ours.
	if c := dial("127.0.0.13"); held(c, 200*time.Millisecond) {
		if held(dial("127.0.0.14"), 500*time.Millisecond) {
			t.Fatal("a fifth connection in all was held")
		}
	}
	if timeouts {
		// The handshakes time out; their places are free again.
		time.Sleep(1500 * time.Millisecond)
	} else {
		a1.Close()
		a2.Close()
		time.Sleep(100 * time.Millisecond)
	}
	if !held(dial("127.0.0.11"), 200*time.Millisecond) {
		t.Fatal("a connection after the first ones ended was not held")
	}
}

// dialFrom is a TCP connection from the loopback address from to addr,
// closed when the test ends.
func dialFrom(t *testing.T, from, addr string) net.Conn {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
