// Package testport finds loopback ports for programs a test starts that
// must be told their port (coturn, baresip, stunnel, a relay's listener).
//
// A port the kernel chooses (":0") comes from the ephemeral range, where the
// connections and UDP sockets of every other test running at the same time
// take their local ports: one of them can take it between the check and the
// program's own bind ("Address already in use", seen in CI with baresip).
// These ports come from below that range, where only a listener takes one.
package testport

import (
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// 21000-24999: above the edge's dev ports (10443-19100) and below the
// core's (25061-29100; its HTTPS is 20443).
const first, count = 21000, 4000

// TCP is a port free for TCP on 127.0.0.1.
func TCP(t testing.TB) int { return pick(t, true, false) }

// UDP is a port free for UDP on 127.0.0.1.
func UDP(t testing.TB) int { return pick(t, false, true) }

// Both is a port free for both UDP and TCP on 127.0.0.1.
func Both(t testing.TB) int { return pick(t, true, true) }

func pick(t testing.TB, tcp, udp bool) int {
	t.Helper()
	if first+count > ephemeralLow() {
		t.Fatalf("the ephemeral port range starts below %d: testport has no ports outside it", first+count)
	}
	start := rand.IntN(count)
	for i := range count {
		port := first + (start+i)%count
		if free(port, tcp, udp) {
			return port
		}
	}
	t.Fatalf("no free port in %d-%d", first, first+count-1)
	return 0
}

func free(port int, tcp, udp bool) bool {
	addr := "127.0.0.1:" + strconv.Itoa(port)
	if tcp {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return false
		}
		defer l.Close()
	}
	if udp {
		c, err := net.ListenPacket("udp", addr)
		if err != nil {
			return false
		}
		defer c.Close()
	}
	return true
}

// ephemeralLow is the first port of the kernel's ephemeral range.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 32768
	}
	v, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return v
}
