package edge

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	linkUp      prometheus.Gauge
	linkDowns   prometheus.Counter
	keepalives  *prometheus.CounterVec
	requests    *prometheus.CounterVec
	mtlsRefused *prometheus.CounterVec
	reloads     *prometheus.CounterVec
	refused     *prometheus.CounterVec
	federated   *prometheus.CounterVec
	imFilter    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		linkUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "portcullis_edge_core_link_up",
			Help: "1 while the mutual-TLS link to the core answers keepalives.",
		}),
		linkDowns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "portcullis_edge_core_link_down_total",
			Help: "Times the link to the core went down.",
		}),
		keepalives: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_edge_core_keepalives_total",
			Help: "OPTIONS keepalives sent to the core, by result.",
		}, []string{"result"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_edge_internal_sip_requests_total",
			Help: "SIP requests received on the internal listener, by method.",
		}, []string{"method"}),
		mtlsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_edge_mtls_refused_total",
			Help: "Mutual-TLS connections refused on the internal listener, by reason.",
		}, []string{"reason"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_edge_config_reloads_total",
			Help: "Configuration reloads, by result.",
		}, []string{"result"}),
	}
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "portcullis_edge_requests_refused_total",
		Help: "Requests the Access Edge refused, by reason.",
	}, []string{"reason"})
	m.federated = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "portcullis_edge_federation_requests_total",
		Help: "Requests admitted across federation, by direction (inbound, outbound) and source type (DirectPartner, AutoFederation). Refusals are in portcullis_edge_requests_refused_total (reasons partner_*, outbound_*, discovered_*).",
	}, []string{"direction", "source_type"})
	m.imFilter = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "portcullis_edge_im_filter_actions_total",
		Help: "Intelligent IM Filter actions, by direction (inbound, outbound) and action (allow, warn, block, refused).",
	}, []string{"direction", "action"})
	reg.MustRegister(m.linkUp, m.linkDowns, m.keepalives, m.requests, m.mtlsRefused, m.reloads, m.refused, m.federated, m.imFilter)
	return m
}
