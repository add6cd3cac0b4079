// Package turntest holds what the tests that drive the relay with pion's
// TURN client share.
package turntest

import (
	"net"
	"testing"

	"github.com/pion/turn/v5"
)

// Client is pion's TURN client over conn to server (used for STUN too),
// listening, and closed when the test ends.
func Client(t testing.TB, server string, conn net.PacketConn, username, password, realm string) *turn.Client {
	t.Helper()
	cl, err := turn.NewClient(&turn.ClientConfig{TURNServerAddr: server, STUNServerAddr: server, Conn: conn,
		Username: username, Password: password, Realm: realm})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	if err := cl.Listen(); err != nil {
		t.Fatal(err)
	}
	return cl
}
