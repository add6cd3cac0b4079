// Command siploadgen drives a SIP TLS proxy (the Access Edge, or Kamailio)
// with MESSAGE transactions or INVITE/200/ACK/BYE calls from a caller to a
// registered callee, at stepped rates for bounded times, and reports the
// completed rate, failures and response time percentiles per step. It also
// measures TLS connections per second and the server's memory per idle TLS
// connection (from /proc).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"portcullis/bench/internal/proc"
	"portcullis/bench/internal/stats"
	// The servers' hold of answered INVITE transactions (RFC 6026 Timers L
	// and M, 50 ms, set in its init), not sipgo's 32 s: the callee's handler
	// waits for its transaction to end, so it would otherwise hold 40,000
	// transactions at 1,300 calls/s, and the tool's own garbage collection
	// would load the machine the servers share with it.
	_ "portcullis/internal/sipnode"
)

type opts struct {
	server, name, ca, domain string
	caller, callerPW         string
	callee, calleePW         string
	calleeServer, calleeName string
	mode                     string
	rates                    []int
	step                     time.Duration
	workers                  int
	pids                     []int
	label                    string
	conns                    int
	metrics                  string
}

// Step is one rate step's result.
type Step struct {
	Label      string  `json:"label"`
	Mode       string  `json:"mode"`
	Offered    int     `json:"offered_per_sec"`
	Completed  float64 `json:"completed_per_sec"`
	FailedPct  float64 `json:"failed_pct"`
	P50ms      float64 `json:"p50_ms"`
	P99ms      float64 `json:"p99_ms"`
	ServerCPUs float64 `json:"server_cpu_seconds"`
	// Errors counts failures by cause (a few of each kind).
	Errors map[string]int `json:"errors,omitempty"`
}

func main() {
	var o opts
	var rates, pids string
	flag.StringVar(&o.server, "server", "", "proxy TLS address host:port")
	flag.StringVar(&o.name, "server-name", "", "name in the proxy's certificate")
	flag.StringVar(&o.calleeServer, "callee-server", "", "where the callee registers, host:port (default: -server); e.g. the core's users listener, for an internal callee")
	flag.StringVar(&o.calleeName, "callee-server-name", "", "name in the callee server's certificate (default: -server-name)")
	flag.StringVar(&o.ca, "ca", "", "CA file")
	flag.StringVar(&o.domain, "domain", "example.test", "SIP domain")
	flag.StringVar(&o.caller, "caller", "alice", "caller user")
	flag.StringVar(&o.callerPW, "caller-password", "", "caller password")
	flag.StringVar(&o.callee, "callee", "bob", "callee user")
	flag.StringVar(&o.calleePW, "callee-password", "", "callee password")
	flag.StringVar(&o.mode, "mode", "message", "message | call | connect | idle")
	flag.StringVar(&rates, "rates", "200,400,800", "offered rates per second, one step each")
	flag.DurationVar(&o.step, "step", 5*time.Second, "time per step (bounded)")
	flag.IntVar(&o.workers, "workers", 32, "caller connections")
	flag.StringVar(&pids, "pids", "", "server pids (comma-separated) for CPU and memory")
	flag.StringVar(&o.label, "label", "server", "name in the report")
	flag.IntVar(&o.conns, "conns", 500, "idle TLS connections (idle mode)")
	flag.StringVar(&o.metrics, "metrics", "", "the server's Prometheus /metrics URL (Go servers: heap and stack per idle connection)")
	flag.Parse()
	for _, r := range strings.Split(rates, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(r)); err == nil && n > 0 && n <= 100000 {
			o.rates = append(o.rates, n)
		}
	}
	o.pids = proc.ParsePIDs(pids)
	if o.server == "" || o.ca == "" || o.step <= 0 || o.step > time.Minute || o.workers < 1 || o.workers > 1000 || o.conns > 5000 {
		fail(errors.New("need -server and -ca; 0 < -step <= 1m; 1 <= -workers <= 1000; -conns <= 5000"))
	}
	sip.SetDefaultLogger(slog.New(slog.DiscardHandler)) // a tool: sipgo's package logger is ours to silence
	tlsConf, err := tlsConfig(o)
	if err != nil {
		fail(err)
	}
	enc := json.NewEncoder(os.Stdout)
	switch o.mode {
	case "connect":
		_ = enc.Encode(connectRate(o, tlsConf))
	case "idle":
		_ = enc.Encode(idleMemory(o, tlsConf))
	case "message", "call":
		steps, err := load(o, tlsConf)
		if err != nil {
			fail(err)
		}
		for _, s := range steps {
			_ = enc.Encode(s)
		}
	default:
		fail(fmt.Errorf("unknown mode %q", o.mode))
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "siploadgen:", err)
	os.Exit(1)
}

func tlsConfig(o opts) (*tls.Config, error) {
	pem, err := os.ReadFile(o.ca)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	name := o.name
	if name == "" {
		name, _, _ = net.SplitHostPort(o.server)
	}
	return &tls.Config{RootCAs: pool, ServerName: name, MinVersion: tls.VersionTLS12}, nil
}

func newUA(conf *tls.Config) (*sipgo.UserAgent, *sipgo.Client, *sipgo.Server) {
	quiet := slog.New(slog.DiscardHandler)
	ua, err := sipgo.NewUA(sipgo.WithUserAgenTLSConfig(conf), sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(quiet)))
	if err != nil {
		fail(err)
	}
	cl, _ := sipgo.NewClient(ua, sipgo.WithClientHostname("127.0.0.1"), sipgo.WithClientLogger(quiet))
	srv, _ := sipgo.NewServer(ua, sipgo.WithServerLogger(quiet))
	return ua, cl, srv
}

// authed sends requests with preemptive credentials: the first challenge
// is kept and each later request answers it with the next nonce count (one
// round trip per transaction, on both servers alike).
type authed struct {
	cl         *sipgo.Client
	user, pass string
	mu         sync.Mutex
	chal       *digest.Challenge
	header     string // Authorization or Proxy-Authorization
	nc         int
}

func (a *authed) apply(req *sip.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.chal == nil {
		return
	}
	if a.nc >= 200 {
		// A fresh nonce now and then, as a client would: Kamailio keeps nonce
		// counts in a byte and refuses counts past 255.
		a.chal = nil
		return
	}
	a.nc++
	cred, err := digest.Digest(a.chal, digest.Options{Method: string(req.Method), URI: req.Recipient.Addr(), Username: a.user, Password: a.pass, Count: a.nc})
	if err == nil {
		req.RemoveHeader(a.header)
		req.AppendHeader(sip.NewHeader(a.header, cred.String()))
	}
}

func (a *authed) learn(res *sip.Response) bool {
	name, hdr := "WWW-Authenticate", "Authorization"
	if res.StatusCode == 407 {
		name, hdr = "Proxy-Authenticate", "Proxy-Authorization"
	}
	h := res.GetHeader(name)
	if h == nil {
		return false
	}
	ch, err := digest.ParseChallenge(h.Value())
	if err != nil {
		return false
	}
	a.mu.Lock()
	a.chal, a.header, a.nc = ch, hdr, 0
	a.mu.Unlock()
	return true
}

// do runs one transaction, answering one challenge.
func (a *authed) do(ctx context.Context, build func() *sip.Request) (*sip.Response, error) {
	for attempt := 0; attempt < 2; attempt++ {
		req := build()
		a.apply(req)
		res, err := a.cl.Do(ctx, req)
		if err != nil {
			return nil, err
		}
		if (res.StatusCode == 401 || res.StatusCode == 407) && a.learn(res) {
			continue
		}
		return res, nil
	}
	return nil, errors.New("challenged twice")
}

func uri(s string) sip.Uri {
	var u sip.Uri
	_ = sip.ParseUri(s, &u)
	return u
}

func request(o opts, method sip.RequestMethod, from, to string) *sip.Request {
	target := uri(to)
	target.UriParams = sip.HeaderParams{{K: "transport", V: "tls"}}
	req := sip.NewRequest(method, target)
	req.SetDestination(o.server)
	req.AppendHeader(&sip.FromHeader{Address: uri(from), Params: sip.HeaderParams{{K: "tag", V: sip.GenerateTagN(8)}}})
	req.AppendHeader(&sip.ToHeader{Address: uri(to)})
	return req
}

const sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"

// callee registers (at -callee-server, default the proxy) and answers
// MESSAGE and INVITE at once.
func callee(o opts, conf *tls.Config) (*sipgo.UserAgent, error) {
	server := o.server
	if o.calleeServer != "" {
		server = o.calleeServer
		conf = conf.Clone()
		if o.calleeName != "" {
			conf.ServerName = o.calleeName
		}
	}
	ua, cl, srv := newUA(conf)
	srv.OnMessage(func(req *sip.Request, tx sip.ServerTransaction) {
		_ = tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
	})
	contact := sip.ContactHeader{Address: uri("sip:" + o.callee + "@127.0.0.1:5999;transport=tls")}
	dua := &sipgo.DialogUA{Client: cl, ContactHDR: contact}
	var sessions sync.Map // Call-ID → *sipgo.DialogServerSession
	srv.OnInvite(func(req *sip.Request, tx sip.ServerTransaction) {
		sess, err := dua.ReadInvite(req, tx)
		if err != nil {
			return
		}
		sessions.Store(req.CallID().Value(), sess)
		_ = sess.RespondSDP([]byte(sdp))
		<-tx.Done()
	})
	// The ACK stops the 2xx retransmissions (RFC 3261 §13.3.1.4); without it
	// every call costs the servers a retransmitted 200 half a second later.
	srv.OnAck(func(req *sip.Request, tx sip.ServerTransaction) {
		if s, ok := sessions.Load(req.CallID().Value()); ok {
			_ = s.(*sipgo.DialogServerSession).ReadAck(req, tx)
		}
	})
	srv.OnBye(func(req *sip.Request, tx sip.ServerTransaction) {
		if s, ok := sessions.LoadAndDelete(req.CallID().Value()); ok {
			sess := s.(*sipgo.DialogServerSession)
			_ = sess.ReadBye(req, tx)
			sess.Close()
			return
		}
		_ = tx.Respond(sip.NewResponseFromRequest(req, 481, "Call/Transaction Does Not Exist", nil))
	})
	a := &authed{cl: cl, user: o.callee, pass: o.calleePW}
	aor := "sip:" + o.callee + "@" + o.domain
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := a.do(ctx, func() *sip.Request {
		req := sip.NewRequest(sip.REGISTER, sip.Uri{Scheme: "sip", Host: o.domain, UriParams: sip.HeaderParams{{K: "transport", V: "tls"}}})
		req.SetDestination(server)
		req.AppendHeader(&sip.ToHeader{Address: uri(aor)})
		req.AppendHeader(&sip.FromHeader{Address: uri(aor), Params: sip.HeaderParams{{K: "tag", V: sip.GenerateTagN(8)}}})
		req.AppendHeader(sip.NewHeader("Contact", "<"+contact.Address.String()+">;expires=3600"))
		return req
	})
	if err != nil {
		return nil, err
	}
	if res.StatusCode != 200 {
		return nil, fmt.Errorf("callee REGISTER: %d %s", res.StatusCode, res.Reason)
	}
	return ua, nil
}

type worker struct {
	a   *authed
	dua *sipgo.DialogUA
}

func load(o opts, conf *tls.Config) ([]Step, error) {
	cu, err := callee(o, conf)
	if err != nil {
		return nil, err
	}
	defer cu.Close()
	from, to := "sip:"+o.caller+"@"+o.domain, "sip:"+o.callee+"@"+o.domain
	workers := make([]*worker, o.workers)
	for i := range workers {
		ua, cl, _ := newUA(conf)
		defer ua.Close()
		workers[i] = &worker{a: &authed{cl: cl, user: o.caller, pass: o.callerPW},
			dua: &sipgo.DialogUA{Client: cl, ContactHDR: sip.ContactHeader{Address: uri("sip:" + o.caller + "@127.0.0.1:6000;transport=tls")}}}
	}
	one := func(ctx context.Context, w *worker) error {
		if o.mode == "message" {
			res, err := w.a.do(ctx, func() *sip.Request {
				r := request(o, sip.MESSAGE, from, to)
				r.AppendHeader(sip.NewHeader("Content-Type", "text/plain"))
				r.SetBody([]byte("load"))
				return r
			})
			if err != nil {
				return err
			}
			if res.StatusCode != 200 {
				return fmt.Errorf("%d", res.StatusCode)
			}
			return nil
		}
		for attempt := 0; attempt < 2; attempt++ {
			req := request(o, sip.INVITE, from, to)
			req.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
			req.SetBody([]byte(sdp))
			w.a.apply(req)
			sess, err := w.dua.WriteInvite(ctx, req)
			if err != nil {
				return err
			}
			err = sess.WaitAnswer(ctx, sipgo.AnswerOptions{})
			var de *sipgo.ErrDialogResponse
			if errors.As(err, &de) && (de.Res.StatusCode == 407 || de.Res.StatusCode == 401) && w.a.learn(de.Res) {
				sess.Close()
				continue
			}
			if err != nil {
				sess.Close()
				return err
			}
			if err := sess.Ack(ctx); err != nil {
				return err
			}
			err = sess.Bye(ctx)
			sess.Close()
			return err
		}
		return errors.New("challenged twice")
	}
	// Warm up: every worker authenticates once.
	for _, w := range workers {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := one(ctx, w)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	// A first step of two seconds at the first rate, not reported: what a
	// server does once after a change of load (connections of an earlier
	// phase being torn down, caches, stacks and heap growing) is not its
	// rate.
	if len(o.rates) > 0 {
		warm := o
		warm.step = 2 * time.Second
		runStep(warm, o.rates[0], workers, one)
	}
	var steps []Step
	for _, rate := range o.rates {
		steps = append(steps, runStep(o, rate, workers, one))
	}
	return steps, nil
}

func runStep(o opts, rate int, workers []*worker, one func(context.Context, *worker) error) Step {
	free := make(chan *worker, len(workers))
	for _, w := range workers {
		free <- w
	}
	var ok, failed atomic.Int64
	var mu sync.Mutex
	var lat []float64
	errs := map[string]int{}
	note := func(e string) {
		mu.Lock()
		if len(e) > 80 {
			e = e[:80]
		}
		errs[e]++
		mu.Unlock()
	}
	cpu0 := cpuSeconds(o.pids)
	start := time.Now()
	deadline := start.Add(o.step)
	interval := time.Second / time.Duration(rate)
	var wg sync.WaitGroup
	for next := start; next.Before(deadline); next = next.Add(interval) {
		time.Sleep(time.Until(next))
		var w *worker
		select {
		case w = <-free:
		default:
			failed.Add(1) // every connection busy: the offered request is lost
			note("all connections busy")
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { free <- w }()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			t0 := time.Now()
			if err := one(ctx, w); err != nil {
				failed.Add(1)
				note(err.Error())
				return
			}
			ok.Add(1)
			mu.Lock()
			lat = append(lat, float64(time.Since(t0).Microseconds())/1000)
			mu.Unlock()
		}()
	}
	wg.Wait() // transactions still open finish (or time out) before counting
	s := Step{Label: o.label, Mode: o.mode, Offered: rate, Completed: float64(ok.Load()) / o.step.Seconds(), ServerCPUs: cpuSeconds(o.pids) - cpu0, Errors: errs}
	if total := ok.Load() + failed.Load(); total > 0 {
		s.FailedPct = 100 * float64(failed.Load()) / float64(total)
	}
	s.P50ms, s.P99ms, _ = stats.Percentiles(lat)
	return s
}

// connectRate opens TLS connections (handshake, close) for one step.
func connectRate(o opts, conf *tls.Config) map[string]any {
	var n, failed atomic.Int64
	deadline := time.Now().Add(o.step)
	var wg sync.WaitGroup
	for range o.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", o.server, conf)
				if err != nil {
					failed.Add(1)
					continue
				}
				c.Close()
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	return map[string]any{"label": o.label, "mode": "connect", "tls_connections_per_sec": float64(n.Load()) / o.step.Seconds(), "failed": failed.Load()}
}

// idleMemory opens conns idle TLS connections and reads the servers' RSS
// before and after, and for a Go server its live heap and stacks (from
// /metrics: exact, where RSS moves with the runtime's returns to the OS).
func idleMemory(o opts, conf *tls.Config) map[string]any {
	before := rssKB(o.pids)
	goBefore, gcBefore := goLive(o, conf)
	var conns []*tls.Conn
	for range o.conns {
		c, err := tls.Dial("tcp", o.server, conf)
		if err != nil {
			break
		}
		conns = append(conns, c)
	}
	time.Sleep(time.Second)
	after := rssKB(o.pids)
	goAfter, gcAfter := goLive(o, conf)
	for _, c := range conns {
		c.Close()
	}
	n := float64(max(len(conns), 1))
	out := map[string]any{"label": o.label, "mode": "idle", "connections": len(conns), "rss_kib_per_idle_tls_connection": float64(after-before) / n}
	if o.metrics != "" && gcBefore && gcAfter {
		out["go_heap_stack_kib_per_idle_tls_connection"] = (goAfter - goBefore) / 1024 / n
	}
	return out
}

// goLive is a Go server's live heap (as of a garbage collection) plus its
// stacks in use. Heap in use would also count garbage not yet collected,
// which the servers let grow above what is live (lifecycle.TuneGC), so it
// first has the server collect: it opens and closes TLS connections (their
// handshakes are garbage once closed) until the server's count of
// collections moves, for at most a minute. collected is false if it did
// not, or the server has no /metrics.
func goLive(o opts, conf *tls.Config) (bytes float64, collected bool) {
	if o.metrics == "" {
		return 0, false
	}
	const cycles = "go_gc_cycles_total_gc_cycles_total"
	start, ok := metrics(o.metrics)[cycles]
	for deadline := time.Now().Add(time.Minute); ok && time.Now().Before(deadline); {
		if m := metrics(o.metrics); m[cycles] > start {
			return m["go_gc_heap_live_bytes"] + m["go_memstats_stack_inuse_bytes"], true
		}
		for range 20 {
			if c, err := tls.Dial("tcp", o.server, conf); err == nil {
				c.Close()
			}
		}
	}
	return 0, false
}

// metrics reads a Prometheus text page into name → value (unlabelled
// gauges, counters and untyped series only).
func metrics(url string) map[string]float64 {
	out := map[string]float64{}
	res, err := http.Get(url)
	if err != nil {
		return out
	}
	defer res.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(res.Body)
	if err != nil {
		return out
	}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			if len(m.GetLabel()) > 0 {
				continue
			}
			switch {
			case m.Gauge != nil:
				out[name] = m.GetGauge().GetValue()
			case m.Counter != nil:
				out[name] = m.GetCounter().GetValue()
			case m.Untyped != nil:
				out[name] = m.GetUntyped().GetValue()
			}
		}
	}
	return out
}

func rssKB(pids []int) int64 { return proc.Sum(procTree(pids), proc.RSSKiB) }

func cpuSeconds(pids []int) float64 { return proc.Sum(procTree(pids), proc.CPUSeconds) }

// procTree is pids and their children (Kamailio forks worker processes).
func procTree(pids []int) []int {
	out := append([]int(nil), pids...)
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(data)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		ppid, _ := strconv.Atoi(f[1])
		for _, p := range pids {
			if ppid == p {
				out = append(out, pid)
			}
		}
	}
	return out
}
