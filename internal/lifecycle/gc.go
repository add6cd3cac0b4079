package lifecycle

import (
	"context"
	"log/slog"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// The servers allocate fast under SIP load (every message is parsed into a
// tree of small objects) and keep little: tens of megabytes. With Go's
// default GOGC of 100 the collector then runs every few tens of megabytes
// allocated, twenty times a second at 2,000 calls/s, and took 13-15 % of
// the servers' CPU (bench/sip; GODEBUG=gctrace=1). A collection's cost
// grows with what is live, not with the room above it.
//
// TuneGC gives the heap room above what is live only while the allocation
// rate would otherwise make the collector run more than gcCyclesPerSecond
// times a second, and never more than gcRoomBytes of room nor a GC
// percentage above gcMaxPercent. Idle, or relaying media (the TURN data
// plane allocates nothing per packet), a server keeps Go's default 100, so
// memory per TURN allocation is what it was (bench/turn).
const (
	gcCyclesPerSecond = 2
	gcRoomBytes       = 256 << 20
	gcMaxPercent      = 400
	gcMinPercent      = 100
	gcTunePeriod      = time.Second
	liveHeapBytes     = "/gc/heap/live:bytes"
	allocatedBytes    = "/gc/heap/allocs:bytes"
	gogcPercent       = "/gc/gogc:percent"
)

// gcPercent is the GC percentage for live bytes and an allocation rate in
// bytes per second: the percentage at which collections come
// gcCyclesPerSecond times a second, within [gcMinPercent, gcMaxPercent]
// and at most gcRoomBytes above live.
func gcPercent(live, ratePerSecond uint64) int {
	live = max(live, 1<<20) // before the first collection live reads 0
	p := 100 * ratePerSecond / (gcCyclesPerSecond * live)
	p = min(p, 100*gcRoomBytes/live, gcMaxPercent)
	return int(max(p, gcMinPercent))
}

// TuneGC sets the GC percentage from the live heap and the allocation rate,
// read every gcTunePeriod, until stop is called; stop waits for the tuning
// to end and puts the percentage back as it found it. An operator's GOGC in
// the environment wins: then nothing is tuned.
func TuneGC(log *slog.Logger) (stop func()) {
	if v, ok := os.LookupEnv("GOGC"); ok {
		log.Info("garbage collection left to GOGC", "GOGC", v)
		return func() {}
	}
	sample := []metrics.Sample{{Name: liveHeapBytes}, {Name: allocatedBytes}, {Name: gogcPercent}}
	read := func() (live, allocated uint64, current int) {
		metrics.Read(sample)
		if sample[0].Value.Kind() == metrics.KindUint64 {
			live = sample[0].Value.Uint64()
		}
		if sample[1].Value.Kind() == metrics.KindUint64 {
			allocated = sample[1].Value.Uint64()
		}
		current = -1
		if sample[2].Value.Kind() == metrics.KindUint64 {
			current = int(sample[2].Value.Uint64())
		}
		return live, allocated, current
	}
	_, lastAllocated, _ := read()
	last := time.Now()
	orig := debug.SetGCPercent(gcMinPercent)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Every(ctx, gcTunePeriod, func(now time.Time) {
			// The percentage in force is read, not remembered: whatever
			// else in the process set it is corrected on the next tick.
			live, allocated, current := read()
			rate := uint64(float64(allocated-lastAllocated) / now.Sub(last).Seconds())
			lastAllocated, last = allocated, now
			if p := gcPercent(live, rate); p != current && ctx.Err() == nil {
				debug.SetGCPercent(p)
				log.Debug("garbage collection percentage set", "percent", p, "live_bytes", live, "allocated_per_second", rate)
			}
		})
	}()
	return func() {
		cancel()
		<-done
		debug.SetGCPercent(orig)
	}
}
