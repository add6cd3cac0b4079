package relay

import (
	"github.com/prometheus/client_golang/prometheus"

	"portcullis/relay/internal/engine"
)

type metrics struct {
	created     prometheus.Counter
	failed      *prometheus.CounterVec
	authFail    *prometheus.CounterVec
	quota       *prometheus.CounterVec
	unauthDrops prometheus.Counter
	paced       prometheus.Counter
	connRefused *prometheus.CounterVec
	drops       map[string]prometheus.Counter // resolved once: no label lookup per packet
	dropBytes   map[string]prometheus.Counter
}

var dropReasons = []string{engine.DropMalformed, engine.DropNoPermission, engine.DropNoChannel, engine.DropBandwidth, engine.DropDeniedPeer, engine.DropOverload}

func newMetrics(reg prometheus.Registerer, e func() *engine.Engine) *metrics {
	m := &metrics{
		created: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "portcullis_relay_allocations_created_total", Help: "TURN allocations created.",
		}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_relay_allocations_failed_total", Help: "Allocate requests refused, by reason.",
		}, []string{"reason"}),
		authFail: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_relay_auth_failures_total", Help: "Requests with credentials refused, by reason.",
		}, []string{"reason"}),
		quota: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_relay_quota_refusals_total", Help: "Allocations refused by quota: per user (486) or in total (508/300).",
		}, []string{"quota"}),
		unauthDrops: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "portcullis_relay_unauthenticated_answers_suppressed_total", Help: "401 answers not sent because the source exceeded its rate.",
		}),
		paced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "portcullis_relay_paced_bytes_total", Help: "Bytes of TCP relays (RFC 6062) held back to a bandwidth cap: a stream is paced, not dropped.",
		}),
		connRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_relay_connections_refused_total", Help: "Clients' TCP/TLS connections closed at once for being over a cap (per_address, total).",
		}, []string{"reason"}),
		drops:     map[string]prometheus.Counter{},
		dropBytes: map[string]prometheus.Counter{},
	}
	dropped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "portcullis_relay_dropped_packets_total", Help: "Packets dropped, by reason.",
	}, []string{"reason"})
	droppedBytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "portcullis_relay_dropped_bytes_total", Help: "Bytes dropped, by reason.",
	}, []string{"reason"})
	for _, r := range dropReasons {
		m.drops[r] = dropped.WithLabelValues(r)
		m.dropBytes[r] = droppedBytes.WithLabelValues(r)
	}
	active := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "portcullis_relay_allocations_active", Help: "TURN allocations in use.",
	}, func() float64 { return float64(e().Active()) })
	open := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "portcullis_relay_connections_open", Help: "Clients' TCP/TLS connections open (control and RFC 6062 data).",
	}, func() float64 { return float64(e().OpenConns()) })
	reg.MustRegister(m.created, m.failed, m.authFail, m.quota, m.unauthDrops, m.paced, m.connRefused, dropped, droppedBytes, active, open, trafficCollector{e})
	return m
}

func (m *metrics) events() engine.Events {
	return engine.Events{
		AuthFailure: func(r string) { m.authFail.WithLabelValues(r).Inc() },
		AllocationFailed: func(r string) {
			m.failed.WithLabelValues(r).Inc()
			switch r {
			case "quota":
				m.quota.WithLabelValues("user").Inc()
			case "insufficient_capacity", "try_alternate":
				m.quota.WithLabelValues("total").Inc()
			}
		},
		Drop: func(r string, n int) {
			m.drops[r].Inc()
			m.dropBytes[r].Add(float64(n))
		},
		Paced:            func(n int) { m.paced.Add(float64(n)) },
		ConnRefused:      func(r string) { m.connRefused.WithLabelValues(r).Inc() },
		Unauth401Dropped: m.unauthDrops.Inc,
	}
}

// trafficCollector reads the engine's per-allocation counters at scrape
// time, so the packet path touches only its own allocation's atomics.
type trafficCollector struct{ e func() *engine.Engine }

var (
	packetsDesc = prometheus.NewDesc("portcullis_relay_packets_total", "Packets relayed, by direction.", []string{"direction"}, nil)
	bytesDesc   = prometheus.NewDesc("portcullis_relay_bytes_total", "Payload bytes relayed, by direction.", []string{"direction"}, nil)
)

func (trafficCollector) Describe(ch chan<- *prometheus.Desc) { ch <- packetsDesc; ch <- bytesDesc }

func (t trafficCollector) Collect(ch chan<- prometheus.Metric) {
	pp, pb, cp, cb := t.e().Traffic()
	ch <- prometheus.MustNewConstMetric(packetsDesc, prometheus.CounterValue, float64(pp), "to_peer")
	ch <- prometheus.MustNewConstMetric(packetsDesc, prometheus.CounterValue, float64(cp), "to_client")
	ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, float64(pb), "to_peer")
	ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, float64(cb), "to_client")
}
