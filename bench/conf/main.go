// Command conf is the meetings load tool (bench/conf/README.md): anonymous
// guests join meetings through the edge over TLS, and it measures the join
// rate, how long one roster change takes to reach every subscriber, how
// long a group IM takes to reach everyone, and the servers' memory per
// participant. Every wait is bounded.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"portcullis/bench/internal/proc"
	"portcullis/bench/internal/stats"
	"portcullis/internal/sipclient"
)

type opts struct {
	server, name, ca string
	uri, key         string
	meetings         string
	n, concurrency   int
	pids             []int
	names            []string
	wait             time.Duration
}

type participant struct {
	c    *sipclient.Client
	conf *sipclient.Conference
	aor  string

	mu       sync.Mutex
	sawProbe time.Time
	sawIM    time.Time
}

func main() {
	var o opts
	var pids string
	flag.StringVar(&o.server, "server", "127.0.0.1:15061", "the edge's external SIP TLS address")
	flag.StringVar(&o.name, "server-name", "edge.dev.internal", "name in the edge's certificate")
	flag.StringVar(&o.ca, "ca", "", "CA file")
	flag.StringVar(&o.uri, "uri", "", "conference URI (one big meeting)")
	flag.StringVar(&o.key, "key", "", "its conference key")
	flag.StringVar(&o.meetings, "meetings", "", "file of `uri key` lines: many meetings, -n participants each")
	flag.IntVar(&o.n, "n", 100, "participants (in the meeting, or per meeting)")
	flag.IntVar(&o.concurrency, "concurrency", 32, "joins in flight")
	flag.StringVar(&pids, "pids", "", "server pids (comma-separated) for memory")
	names := flag.String("names", "", "their names (comma-separated), to report memory per process")
	flag.DurationVar(&o.wait, "wait", 2*time.Minute, "longest wait for a roster to converge")
	flag.Parse()
	o.pids = proc.ParsePIDs(pids)
	if *names != "" {
		o.names = strings.Split(*names, ",")
	}
	var res map[string]any
	var err error
	if o.meetings != "" {
		res, err = many(o)
	} else {
		res, err = one(o)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "conf:", err)
		os.Exit(1)
	}
	_ = json.NewEncoder(os.Stdout).Encode(res)
}

// joinAll joins n guests to uri, concurrency at a time, and returns them
// and each join's duration.
func joinAll(o opts, uri, key string, n int, prefix string) ([]*participant, []float64, error) {
	ps := make([]*participant, n)
	lat := make([]float64, n)
	sem := make(chan struct{}, o.concurrency)
	var wg sync.WaitGroup
	var failed atomic.Int64
	var firstErr atomic.Value
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			aor := fmt.Sprintf("sip:%s%05d@anonymous.invalid", prefix, i)
			c, err := sipclient.New(sipclient.Options{Server: o.server, ServerName: o.name, CAFile: o.ca, AOR: aor, Password: key, DisplayName: fmt.Sprintf("%s%d", prefix, i),
				ConferenceRefresh: time.Hour})
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err)
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			t0 := time.Now()
			conf, err := c.Join(ctx, uri)
			if err != nil {
				c.Close()
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err)
				return
			}
			lat[i] = float64(time.Since(t0).Microseconds()) / 1000
			p := &participant{c: c, conf: conf, aor: aor}
			ps[i] = p
			go p.watch()
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		return ps, lat, fmt.Errorf("%d of %d joins failed; first: %v", f, n, firstErr.Load())
	}
	return ps, lat, nil
}

var probe atomic.Value // the entity whose arrival is timed

// watch consumes a participant's events, noting when the probe appears in
// its roster and when an IM arrives.
func (p *participant) watch() {
	for ev := range p.conf.Events() {
		now := time.Now()
		switch {
		case ev.Roster != nil:
			p.mu.Lock()
			if e, _ := probe.Load().(string); e != "" && p.sawProbe.IsZero() {
				if _, ok := ev.Roster.Users[e]; ok {
					p.sawProbe = now
				}
			}
			p.mu.Unlock()
		case ev.IM != nil && strings.HasPrefix(ev.IM.Text, "fan-out "):
			p.mu.Lock()
			if p.sawIM.IsZero() {
				p.sawIM = now
			}
			p.mu.Unlock()
		}
	}
}

// waitFor polls (bounded) until ok holds for every participant, and
// returns how many never did.
func waitFor(ps []*participant, d time.Duration, ok func(*participant) bool) int {
	deadline := time.Now().Add(d)
	for {
		missing := 0
		for _, p := range ps {
			p.mu.Lock()
			if !ok(p) {
				missing++
			}
			p.mu.Unlock()
		}
		if missing == 0 || time.Now().After(deadline) {
			return missing
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitConverged waits (bounded) until every participant's roster (the
// client's own, not the events, which a slow reader may miss) holds n
// users, and returns how many do not.
func waitConverged(ps []*participant, n int, d time.Duration) int {
	deadline := time.Now().Add(d)
	for {
		missing := 0
		for _, p := range ps {
			if len(p.conf.Roster().Users) < n {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			return missing
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// one: a single meeting of n guests.
func one(o opts) (map[string]any, error) {
	rss0 := rssKiB(o.pids)
	per0 := perProcess(o)
	t0 := time.Now()
	ps, lat, err := joinAll(o, o.uri, o.key, o.n, "g")
	joinTime := time.Since(t0)
	defer closeAll(ps)
	if err != nil {
		return nil, err
	}
	// Every roster converges on n users.
	t1 := time.Now()
	missing := waitConverged(ps, o.n, o.wait)
	converge := time.Since(t1)
	rss1 := rssKiB(o.pids)
	res := map[string]any{"mode": "one", "participants": o.n, "join_seconds": joinTime.Seconds(),
		"joins_per_sec": float64(o.n) / joinTime.Seconds(), "roster_converge_seconds": converge.Seconds(), "rosters_not_converged": missing}
	res["join_p50_ms"], res["join_p99_ms"], _ = stats.Percentiles(lat)
	if len(o.pids) > 0 {
		res["server_kib_per_participant"] = float64(rss1-rss0) / float64(o.n)
		for name, v := range perProcess(o) {
			res[name+"_kib_per_participant"] = float64(v-per0[name]) / float64(o.n)
		}
	}
	// One roster change: a probe joins; how long until everyone sees it.
	probe.Store("sip:probe00000@anonymous.invalid")
	tp := time.Now()
	pp, _, err := joinAll(o, o.uri, o.key, 1, "probe")
	defer closeAll(pp)
	if err != nil {
		return nil, err
	}
	notSeen := waitFor(ps, 30*time.Second, func(p *participant) bool { return !p.sawProbe.IsZero() })
	roster := delays(ps, tp, func(p *participant) time.Time { return p.sawProbe })
	res["roster_change_p50_ms"], res["roster_change_p99_ms"], res["roster_change_max_ms"] = stats.Percentiles(roster)
	res["roster_change_not_delivered"] = notSeen
	// Group IM fan-out: the first participant speaks.
	ti := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err = ps[0].conf.IM(ctx, "fan-out test")
	cancel()
	if err != nil {
		return nil, err
	}
	others := ps[1:]
	notGot := waitFor(others, 30*time.Second, func(p *participant) bool { return !p.sawIM.IsZero() })
	fan := delays(others, ti, func(p *participant) time.Time { return p.sawIM })
	res["im_fanout_p50_ms"], res["im_fanout_p99_ms"], res["im_fanout_max_ms"] = stats.Percentiles(fan)
	res["im_not_delivered"] = notGot
	return res, nil
}

// delays lists, in ms, how long after since each participant saw something
// (those that never did are counted apart).
func delays(ps []*participant, since time.Time, seen func(*participant) time.Time) []float64 {
	var out []float64
	for _, p := range ps {
		p.mu.Lock()
		t := seen(p)
		p.mu.Unlock()
		if !t.IsZero() {
			out = append(out, float64(t.Sub(since).Microseconds())/1000)
		}
	}
	return out
}

// many: n guests in each meeting of the file, one IM in each.
func many(o opts) (map[string]any, error) {
	per0 := perProcess(o)
	f, err := os.Open(o.meetings)
	if err != nil {
		return nil, err
	}
	var meetings [][2]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) == 2 {
			meetings = append(meetings, [2]string{fs[0], fs[1]})
		}
	}
	f.Close()
	rss0 := rssKiB(o.pids)
	t0 := time.Now()
	groups := make([][]*participant, len(meetings))
	var lat []float64
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs atomic.Int64
	sem := make(chan struct{}, max(o.concurrency/o.n, 1))
	for i, m := range meetings {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			ps, l, err := joinAll(opts{server: o.server, name: o.name, ca: o.ca, concurrency: o.n}, m[0], m[1], o.n, fmt.Sprintf("m%d-", i))
			if err != nil {
				errs.Add(1)
			}
			mu.Lock()
			groups[i], lat = ps, append(lat, l...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	joinTime := time.Since(t0)
	var all []*participant
	for _, g := range groups {
		for _, p := range g {
			if p != nil {
				all = append(all, p)
			}
		}
	}
	defer closeAll(all)
	if errs.Load() > 0 {
		return nil, fmt.Errorf("joins failed in %d meetings", errs.Load())
	}
	missing := waitConverged(all, o.n, o.wait)
	rss1 := rssKiB(o.pids)
	// One IM in every meeting at once.
	ti := time.Now()
	for _, g := range groups {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = g[0].conf.IM(ctx, "fan-out test")
		}()
	}
	var others []*participant
	for _, g := range groups {
		others = append(others, g[1:]...)
	}
	notGot := waitFor(others, 30*time.Second, func(p *participant) bool { return !p.sawIM.IsZero() })
	fan := delays(others, ti, func(p *participant) time.Time { return p.sawIM })
	res := map[string]any{"mode": "many", "meetings": len(meetings), "participants": len(all), "join_seconds": joinTime.Seconds(),
		"joins_per_sec": float64(len(all)) / joinTime.Seconds(), "rosters_not_converged": missing, "im_not_delivered": notGot}
	res["join_p50_ms"], res["join_p99_ms"], _ = stats.Percentiles(lat)
	res["im_fanout_p50_ms"], res["im_fanout_p99_ms"], res["im_fanout_max_ms"] = stats.Percentiles(fan)
	if len(o.pids) > 0 {
		res["server_kib_per_participant"] = float64(rss1-rss0) / float64(len(all))
		for name, v := range perProcess(o) {
			res[name+"_kib_per_participant"] = float64(v-per0[name]) / float64(len(all))
		}
	}
	return res, nil
}

func closeAll(ps []*participant) {
	for _, p := range ps {
		if p != nil {
			p.c.Close()
		}
	}
}

// perProcess is each named server's resident memory (KiB).
func perProcess(o opts) map[string]int64 {
	out := map[string]int64{}
	for i, name := range o.names {
		if i < len(o.pids) {
			out[name] = rssKiB([]int{o.pids[i]})
		}
	}
	return out
}

// rssKiB sums the resident memory of pids.
func rssKiB(pids []int) int64 { return proc.Sum(pids, proc.RSSKiB) }
