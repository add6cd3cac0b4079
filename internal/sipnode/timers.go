package sipnode

import "github.com/emiago/sipgo/sip"

// acceptedHold is how long an INVITE transaction stays "Accepted" after a
// 2xx (RFC 6026 Timers L and M): 2×T1, 1 s, not 64×T1 = 32 s.
//
// Portcullis speaks SIP only over TLS and TCP, where an INVITE is never
// retransmitted hop by hop, and its proxies end their INVITE transactions
// as soon as the final response is through (sipgo ends a server
// transaction on a reliable transport when its handler returns). So in the
// proxies these timers only decide memory: sipgo v1.7.2 does not stop them
// when a transaction ends, and each timer's closure keeps its transaction,
// with the request and response it carried, alive until it fires: four per
// call through the edge and the core, about 34 KB per call.
//
// A user agent's own client transaction (portcullis join and client) does
// stay Accepted for this long: 2×T1 still takes in the first 2xx a user
// agent retransmits (T1 after its 2xx, when no ACK has come), which an ACK
// over TCP makes the only one.
//
// Measured at 1,300 calls/s through the edge and the core (bench/sip): the
// heap in use was 74 MB with 1 s against 323 MB with T4 (5 s), and the
// garbage collector's mark phases over the larger heap stalled calls long
// enough to fail 3.4-3.7 % of them against 0.2-0.6 %.
var acceptedHold = 2 * sip.T1 // sip.T1 is a variable in sipgo

func init() {
	sip.Timer_L = acceptedHold
	sip.Timer_M = acceptedHold
}
