package metrics

import "github.com/prometheus/client_golang/prometheus"

// Limits are the metrics of the Workload API's limits (limits section).
type Limits struct {
	// Limited counts calls and connections refused by a limit, by reason:
	// rate, max_streams, max_streams_per_uid (calls, answered
	// ResourceExhausted); max_conns, max_conns_per_uid, no_peer_credentials
	// (connections, closed at accept).
	Limited *prometheus.CounterVec
	// AcceptErrors counts failed accepts on the Workload API socket, by
	// kind (emfile, enfile, enobufs, enomem, econnaborted, other).
	AcceptErrors *prometheus.CounterVec
}

// RegisterLimits registers the limits' metrics on m's registry; conns
// reports the Workload API connections open now (read at scrape time).
func (m *Metrics) RegisterLimits(conns func() float64) *Limits {
	l := &Limits{
		Limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodeward_workload_api_limited_total",
			Help: "Workload API calls (rate, max_streams, max_streams_per_uid: answered ResourceExhausted) and connections (max_conns, max_conns_per_uid, no_peer_credentials: closed at accept) refused by the limits section.",
		}, []string{"reason"}),
		AcceptErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodeward_workload_api_accept_errors_total",
			Help: "Failed accepts on the Workload API socket, by kind (emfile, enfile, enobufs, enomem, econnaborted, other); the agent backs off and keeps serving.",
		}, []string{"kind"}),
	}
	m.Registry.MustRegister(l.Limited, l.AcceptErrors, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "nodeward_workload_api_connections", Help: "Workload API connections open now.",
	}, conns))
	// Closed label sets start at zero (see initLabels).
	for _, r := range []string{"rate", "max_streams", "max_streams_per_uid", "max_conns", "max_conns_per_uid", "no_peer_credentials"} {
		l.Limited.WithLabelValues(r)
	}
	for _, k := range []string{"emfile", "enfile", "enobufs", "enomem", "econnaborted", "other"} {
		l.AcceptErrors.WithLabelValues(k)
	}
	return l
}
