package core

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	requests    *prometheus.CounterVec
	mtlsRefused *prometheus.CounterVec
	edges       prometheus.GaugeFunc
	reloads     *prometheus.CounterVec

	requestsRefused *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, edges func() float64) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_core_sip_requests_total",
			Help: "SIP requests received from verified edges, by method.",
		}, []string{"method"}),
		mtlsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_core_mtls_refused_total",
			Help: "Mutual-TLS connections refused, by reason.",
		}, []string{"reason"}),
		edges: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "portcullis_core_edge_links",
			Help: "Verified edge connections open now.",
		}, edges),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_core_config_reloads_total",
			Help: "Configuration reloads, by result.",
		}, []string{"result"}),
	}
	m.requestsRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "portcullis_core_requests_refused_total",
		Help: "Requests from users refused by the registrar or the proxy, by reason.",
	}, []string{"reason"})
	reg.MustRegister(m.requests, m.mtlsRefused, m.edges, m.reloads, m.requestsRefused)
	return m
}
