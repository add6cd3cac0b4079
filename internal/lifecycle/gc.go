package lifecycle

import (
	"context"
	"log/slog"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// The servers allocate fast (every SIP message is parsed into a tree of
// small objects) and keep little: tens of megabytes under load. With Go's
// default GOGC of 100 the collector then runs every few tens of megabytes
// allocated, twenty times a second at 2,000 calls/s, and took 13-15 % of
// the servers' CPU (bench/sip; GODEBUG=gctrace=1). A collection's cost
// grows with what is live, not with the room above it, so room is cheap
// while little is live and dear when much is.
//
// gcRoom lets the heap grow up to gcRoomBytes above what is live, as a GC
// percentage between 100 (Go's default: a heap that holds many idle
// connections grows no more than it would anyway) and gcMaxPercent.
const (
	gcRoomBytes   = 256 << 20
	gcMaxPercent  = 400
	gcMinPercent  = 100
	gcTunePeriod  = time.Second
	liveHeapBytes = "/gc/heap/live:bytes"
)

// gcPercent is the GC percentage that leaves gcRoomBytes of room above live
// bytes, within [gcMinPercent, gcMaxPercent].
func gcPercent(live uint64) int {
	if live == 0 {
		return gcMaxPercent
	}
	p := uint64(100) * gcRoomBytes / live
	return int(min(max(p, gcMinPercent), gcMaxPercent))
}

// TuneGC keeps the GC percentage at gcPercent of the live heap, read every
// gcTunePeriod, until ctx ends. An operator's GOGC in the environment wins:
// then nothing is tuned.
func TuneGC(ctx context.Context, log *slog.Logger) {
	if v, ok := os.LookupEnv("GOGC"); ok {
		log.Info("garbage collection left to GOGC", "GOGC", v)
		return
	}
	sample := []metrics.Sample{{Name: liveHeapBytes}}
	current := -1
	tune := func() {
		metrics.Read(sample)
		var live uint64
		if sample[0].Value.Kind() == metrics.KindUint64 {
			live = sample[0].Value.Uint64()
		}
		if p := gcPercent(live); p != current {
			debug.SetGCPercent(p)
			current = p
			log.Debug("garbage collection percentage set", "percent", p, "live_bytes", live)
		}
	}
	tune()
	go func() {
		t := time.NewTicker(gcTunePeriod)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				tune()
			}
		}
	}()
}
