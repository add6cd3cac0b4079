package edge

import (
	"log/slog"
	"runtime"

	"golang.org/x/sys/unix"
)

// descriptorsNeeded is how many files the edge may hold open at its
// configured caps: a socket per external SIP connection and per TURN
// allocation (its relay socket; allocations are bounded by the total quota
// and by the relay port range of each family), two per client TCP/TLS
// connection to the relay (it, and the peer's when it is an RFC 6062 data
// connection), and descriptorReserve.
func descriptorsNeeded(c Config) uint64 {
	n := descriptorReserve()
	if c.External.Listen != "" && c.External.Limits.MaxConnections > 0 {
		n += uint64(c.External.Limits.MaxConnections)
	}
	if c.TURN.Enabled {
		ports := uint64(c.TURN.Relay.PortMax - c.TURN.Relay.PortMin + 1)
		if c.TURN.Relay.BindIPv6 != "" {
			ports *= 2
		}
		if total := uint64(c.TURN.Quota.Total); total > 0 && total < ports {
			ports = total
		}
		n += ports
		if len(c.TURN.ListenTCP)+len(c.TURN.ListenTLS) > 0 {
			n += 2 * uint64(c.TURN.Connections.Max)
		}
	}
	return n
}

// descriptorReserve is what the edge holds open besides connections and
// relay sockets: listeners, the core link, partner edges, two epoll
// descriptors and a few sockets per relay loop (one loop per CPU), files.
func descriptorReserve() uint64 { return uint64(64 + 8*runtime.NumCPU()) }

// openFileLimit is the process's RLIMIT_NOFILE (Go raises the soft limit
// to the hard one at start), 0 when it cannot be read.
func openFileLimit() uint64 {
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) != nil {
		return 0
	}
	return rl.Cur
}

// warnFileLimit logs when limit is below what the configured caps can use:
// past it, connections fail to be accepted and allocations to be made
// (EMFILE) before the caps refuse them with a precise answer.
func warnFileLimit(log *slog.Logger, c Config, limit uint64) {
	if need := descriptorsNeeded(c); limit > 0 && limit < need {
		log.Warn("open-file limit below what the caps can use", "limit", limit, "needed", need,
			"effect", "connections and TURN allocations past the limit fail",
			"fix", "raise the limit (systemd LimitNOFILE) or lower external.limits.max_connections, turn.quota.total_allocations and turn.connections.max")
	}
}
