package sipnode

import "github.com/emiago/sipgo/sip"

// Timers L and M (RFC 6026: how long an INVITE transaction stays
// "Accepted" after a 2xx) are T4, not 64×T1 = 32 s. Portcullis speaks SIP
// only over TLS and TCP, where an INVITE is never retransmitted hop by hop,
// and its proxies end their INVITE transactions as soon as the final
// response is through. But sipgo v1.7.2 does not stop these two timers when
// a transaction ends, and each timer's closure keeps its transaction, with
// the request and response it carried, alive until it fires: four per call
// through the edge and the core, about 34 KB per call held for 32 s (870 MB
// at 800 calls/s). T4 (5 s, the time a message may remain in the network,
// and Kamailio's wait timer) bounds that to what a late 2xx from another
// branch could still need.
func init() {
	sip.Timer_L = sip.T4
	sip.Timer_M = sip.T4
}
