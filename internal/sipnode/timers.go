package sipnode

import (
	"time"

	"github.com/emiago/sipgo/sip"
)

// acceptedHold is how long an INVITE transaction stays "Accepted" after a
// 2xx (RFC 6026 Timers L and M): 50 ms, not 64×T1 = 32 s.
//
// Portcullis speaks SIP only over TLS and TCP, where an INVITE is never
// retransmitted hop by hop. Its proxies end their INVITE transactions as
// soon as the final response is through (sipgo ends a server transaction
// on a reliable transport when its handler returns) and drop responses that
// match no transaction, so a user agent's 2xx retransmission (RFC 3261
// §13.3.1.4, T1 after its 2xx when no ACK has come) does not reach a
// caller through them; a caller facing a user agent directly (a focus in
// the core) ACKs at once over the same connection. What these timers still decide is
// memory: sipgo v1.7.2 does not stop them when a transaction ends, and each
// timer's closure keeps its transaction, with the request and response it
// carried, alive until it fires: four per call through the edge and the
// core, about 34 KB per call.
//
// Measured with bench/sip at 1,300-1,400 calls/s through the edge and the
// core (two rounds of each, A/B): heap in use 323 MB with T4 (5 s), 72 MB
// with 1 s, 30 MB with 250 ms, 17 MB with 50 ms. The garbage collector's
// passes over the larger heaps stalled calls long enough to fail 3.4-3.7 %
// of them at 1,300/s with 5 s and 0.3-0.7 % with 1 s; with 50 ms none
// failed at 1,400/s (p99 34-41 ms, against 68-148 ms with 250 ms).
const acceptedHold = 50 * time.Millisecond

func init() {
	sip.Timer_L = acceptedHold
	sip.Timer_M = acceptedHold
}
