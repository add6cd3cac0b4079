package relay_test

import (
	"testing"
	"time"

	"github.com/pion/stun/v4"
)

// BenchmarkChannelDataRoundTrip relays ChannelData client → relay → echo
// peer → relay → client over real loopback sockets, 32 packets in flight.
// Each op is one round trip: two relayed packets. Profile the server with
// -cpuprofile; bench/turn measures it against coturn.
func BenchmarkChannelDataRoundTrip(b *testing.B) {
	cfg := testConfig(b)
	cfg.Unauthenticated.PerSecond, cfg.Unauthenticated.Burst = 1e6, 1e6
	e := start(b, cfg)
	peer := newEchoPeer(b, "127.0.0.1:0")
	c := dialClient(b, "udp", e.udp, e.cred("bench"))
	res := c.request(stun.MethodAllocate, udpTransport)
	if code(res) != 0 {
		b.Fatal("allocate")
	}
	if code(c.request(stun.MethodChannelBind, channelAttr(0x4000), peerAttr(peer.addr()))) != 0 {
		b.Fatal("bind")
	}
	frame := channelFrame(0x4000, make([]byte, 172))
	const window = 32
	buf := make([]byte, 2048)
	b.ReportAllocs()
	b.ResetTimer()
	inflight := 0
	for i := 0; i < b.N; i++ {
		for inflight < window {
			_, _ = c.conn.Write(frame)
			inflight++
		}
		_ = c.conn.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.conn.Read(buf); err != nil {
			inflight = 0 // lost packets: refill the window
			continue
		}
		inflight--
	}
	b.StopTimer()
	b.ReportMetric(float64(2*b.N)/b.Elapsed().Seconds(), "relayed_pkts/s")
}
