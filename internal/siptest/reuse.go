package siptest

import (
	"bufio"
	"crypto/tls"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Squatter is a TLS connection made from the address and port an earlier
// connection came from (what another user on a shared host, or behind a
// NAT that gives the port out again, may get): it sends nothing and
// reports the first line anything sends it, then closes, so that a server
// that took it for the earlier connection fails its request at once.
type Squatter struct {
	conn  *tls.Conn
	First chan string // the first line received ("" when the connection ended first)
}

// Squat connects from `from` to `to` over TLS (retrying while the earlier
// connection's port is still held, closing, up to 20 s).
func Squat(t testing.TB, from, to string, conf *tls.Config) *Squatter {
	t.Helper()
	ap, err := netip.ParseAddrPort(from)
	if err != nil {
		t.Fatal(err)
	}
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(ap), Control: reuseAddr}
	var raw net.Conn
	for i := 0; ; i++ {
		if raw, err = d.Dial("tcp", to); err == nil {
			break
		}
		if i == 200 {
			t.Fatalf("connecting from %s: %v", from, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c := tls.Client(raw, conf)
	if err := c.Handshake(); err != nil {
		raw.Close()
		t.Fatal(err)
	}
	s := &Squatter{conn: c, First: make(chan string, 1)}
	t.Cleanup(func() { c.Close() })
	go func() {
		line, _ := bufio.NewReader(c).ReadString('\n')
		s.First <- line
		c.Close()
	}()
	return s
}

// Got returns the first line received within d ("" for none).
func (s *Squatter) Got(d time.Duration) string {
	select {
	case line := <-s.First:
		return line
	case <-time.After(d):
		return ""
	}
}

// reuseAddr sets SO_REUSEADDR on a socket: on the squatter's, and on the
// connections a Pipe makes, so that a port the pipe's closed connection
// left in TIME_WAIT can be bound again.
func reuseAddr(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) }); err != nil {
		return err
	}
	return serr
}
