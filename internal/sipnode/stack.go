package sipnode

// stackReserve is the stack a request handler is given up front.
const stackReserve = 8 << 10

// GrowStack grows the stack of the goroutine sipgo started for a request
// (or of a proxy's branch goroutine) to 16 KiB while it is still shallow. A
// goroutine starts with a small stack, and the runtime doubles it by
// copying whenever a call needs more; in the proxies' handlers that
// happened deep in the call chain (the edge's routing links, sipgo's
// connection pool and debug logging), where the copy has many frames to
// walk and adjust: 5 % of the server's CPU under call load. Growing it once
// at the handler's entry copies a few frames.
//
//go:noinline
func GrowStack() {
	var pad [stackReserve]byte
	keep(&pad)
}

//go:noinline
func keep(*[stackReserve]byte) {}
