package edge

import "testing"

// The need counts external connections when the external listener is on,
// and TURN allocations as the smaller of the total quota and the relay
// ports of each family.
func TestDescriptorsNeeded(t *testing.T) {
	reserve := descriptorReserve()
	base := DefaultConfig()
	withExternal := base
	withExternal.External.Listen = "0.0.0.0:5061"
	turn := func(minPort, maxPort, total int, v6 bool) Config {
		c := base
		c.TURN.Enabled = true
		c.TURN.Relay.PortMin, c.TURN.Relay.PortMax = minPort, maxPort
		c.TURN.Quota.Total = total
		if v6 {
			c.TURN.Relay.BindIPv6 = "::1"
		}
		return c
	}
	for _, tc := range []struct {
		name string
		c    Config
		want uint64
	}{
		{"neither", base, reserve},
		{"external", withExternal, reserve + 10000},
		{"ports fewer than the quota", turn(40000, 40999, 10000, false), reserve + 1000},
		{"quota fewer than the ports", turn(40000, 40999, 300, false), reserve + 300},
		{"no total quota", turn(40000, 40999, 0, false), reserve + 1000},
		{"two families", turn(40000, 40999, 10000, true), reserve + 2000},
		{"TCP clients", func() Config {
			c := turn(40000, 40999, 10000, false)
			c.TURN.ListenTCP = []string{"0.0.0.0:3478"}
			return c
		}(), reserve + 1000 + 2*10000},
	} {
		if got := descriptorsNeeded(tc.c); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}
