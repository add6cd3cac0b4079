// Package ops serves the internal-only operations listener of both servers:
// Prometheus /metrics, /healthz (the process is alive) and /readyz (it can do
// its job now).
package ops

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"portcullis/internal/config"
)

// Config is the `metrics` section of a server's config.
type Config struct {
	// Listen is the internal address of the metrics and health listener.
	Listen string `yaml:"listen"`
}

// Validate checks the address. When internalOnly is set, a wildcard host is
// refused: on the edge it would also listen on the internet-facing side.
func (c *Config) Validate(v *config.V, internalOnly bool) {
	v.CheckHostPort("listen", c.Listen, true)
	if host, _, err := net.SplitHostPort(c.Listen); err == nil && internalOnly {
		ip := net.ParseIP(host)
		v.Check(host != "" && (ip == nil || !ip.IsUnspecified()), "listen",
			"must name the internal interface's address, not a wildcard (%q would also face the internet)", c.Listen)
	}
}

// NewRegistry returns a registry with the Go runtime and process collectors.
// Besides the Go collector's defaults it exports the live heap as of the
// last collection (go_gc_heap_live_bytes) and the count of collections
// (go_gc_cycles_total_gc_cycles_total): heap in use also counts garbage not
// yet collected, which the servers let grow (lifecycle.TuneGC); and how
// long goroutines wait to run once ready (go_sched_latencies_seconds): a
// tail there is the process waiting for a CPU, which every request's
// response time then carries.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(collectors.GoRuntimeMetricsRule{
			Matcher: regexp.MustCompile(`^/gc/(heap/live:bytes|cycles/total:gc-cycles)$|^/sched/latencies:seconds$`),
		})),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Server is a running ops listener.
type Server struct {
	http *http.Server
	ln   net.Listener
	done chan struct{}
}

// Listen binds addr and serves. ready returns nil when the server is ready,
// or the reason it is not.
func Listen(addr string, reg *prometheus.Registry, ready func() error, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return Serve(ln, mux, log), nil
}

// Serve serves h on ln with the timeouts every Portcullis HTTP listener
// uses, until Close. The core's HTTPS API is served the same way.
func Serve(ln net.Listener, h http.Handler, log *slog.Logger) *Server {
	s := &Server{
		http: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       60 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
		ln:   ln,
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http listener stopped", "error", err)
		}
	}()
	return s
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the listener, letting requests in progress finish briefly.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.http.Shutdown(ctx)
	if err != nil {
		err = s.http.Close()
	}
	<-s.done
	return err
}
