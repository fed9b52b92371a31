// Package metrics holds the agent's Prometheus metrics, all prefixed
// "nodeward_", on a registry of their own (served on the admin listener's
// /metrics). docs/metrics.md lists each one with the SLI it serves.
//
// Security: labels are low-cardinality and never carry SPIFFE IDs, tokens or
// selectors; per-workload detail belongs in the audit trail, not in metrics.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are the agent's metrics.
type Metrics struct {
	Registry *prometheus.Registry

	RPCs           *prometheus.CounterVec   // rpc, code
	RPCDuration    *prometheus.HistogramVec // rpc
	OpenStreams    *prometheus.GaugeVec     // rpc
	Issued         *prometheus.CounterVec   // kind
	Denied         *prometheus.CounterVec   // reason
	Attestation    prometheus.Histogram
	AttestFailures prometheus.Counter
	Minted         *prometheus.CounterVec // kind
	Rotations      prometheus.Counter
	RotationFails  prometheus.Counter
	Revocations    prometheus.Counter
	// RevocationDelay is how late a revocation took effect: for an entry
	// past its expires, the time from expiry to the agent dropping it; for
	// a reload or a stale disable, 0 (it applies at once).
	RevocationDelay *prometheus.HistogramVec // reason
	Reloads         *prometheus.CounterVec   // result
	// ServerSyncs counts syncs with the SPIRE server by result (fleet
	// mode registers it; standalone mode does not export it).
	ServerSyncs    *prometheus.CounterVec
	AuditErrors    prometheus.Counter
	AuditDropped   *prometheus.CounterVec // reason (rate_limited)
	AuditReopen    prometheus.Counter     // failed reopens (SIGUSR1)
	TPMQuotes      *prometheus.CounterVec // result (ok, error)
	IntermRotation *prometheus.CounterVec // result (ok, error)
}

// Buckets for local RPCs: 50 µs to ~400 ms.
var latencyBuckets = prometheus.ExponentialBuckets(50e-6, 2, 14)

// New registers the metrics on a fresh registry. entries and svids report
// the policy size and the X.509-SVIDs held, read at scrape time.
func New(entries, svids func() float64) *Metrics {
	return NewWith(entries, svids, nil, nil)
}

// NewWith is New plus two timestamps read at scrape time (Unix seconds, 0
// when not applicable): the last verified TPM quote and the CA
// intermediate's expiry.
func NewWith(entries, svids, lastQuote, intermediateExpiry func() float64) *Metrics {
	r := prometheus.NewRegistry()
	f := func(c prometheus.Collector) { r.MustRegister(c) }
	m := &Metrics{
		Registry: r,
		RPCs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodeward_workload_api_requests_total", Help: "Workload API RPCs finished, by RPC and gRPC code.",
		}, []string{"rpc", "code"}),
		RPCDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "nodeward_workload_api_request_duration_seconds", Help: "Duration of unary Workload API RPCs, and of streams until they end.",
			Buckets: latencyBuckets,
		}, []string{"rpc"}),
		OpenStreams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "nodeward_workload_api_open_streams", Help: "Workload API streams open now, by RPC.",
		}, []string{"rpc"}),
		Issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodeward_svids_issued_total", Help: "SVIDs sent to workloads, by kind (x509, jwt).",
		}, []string{"kind"}),
		Denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodeward_requests_denied_total", Help: "Refused Workload API requests, by reason (no_identity, not_entitled, attestation_failed, identity_changed, missing_header, no_peer_credentials).",
		}, []string{"reason"}),
		Attestation: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "nodeward_attestation_duration_seconds", Help: "Duration of one caller's attestation (all attestors and the pidfd checks).",
			Buckets: latencyBuckets,
		}),
		AttestFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodeward_attestation_failures_total", Help: "Attestations that failed (the caller was denied).",
		}),
		Minted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodeward_svids_minted_total", Help: "SVIDs signed by the CA, by kind (x509, jwt); cache hits are not counted.",
		}, []string{"kind"}),
		Rotations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodeward_x509_rotations_total", Help: "X.509-SVIDs re-minted before expiry.",
		}),
		RotationFails: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodeward_x509_rotation_failures_total", Help: "Failed X.509-SVID re-mints (the old SVID keeps serving; retried in 5 s).",
		}),
		Revocations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodeward_entries_revoked_total", Help: "Registration entries removed from the policy (reload or expiry).",
		}),
		RevocationDelay: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "nodeward_revocation_delay_seconds", Help: "How late revocations took effect, by reason (expired: from the entry's expires to the agent dropping it; removed: 0, a reload applies at once).",
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 9),
		}, []string{"reason"}),
		ServerSyncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodeward_server_syncs_total", Help: "Syncs of entries and bundles with the SPIRE server, by result (ok, error); fleet mode.",
		}, []string{"result"}),
		Reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodeward_config_reloads_total", Help: "Configuration reloads, by result (ok, error).",
		}, []string{"result"}),
		AuditErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodeward_audit_write_errors_total", Help: "Audit records lost: not written, or only partly (full disk, closed sink).",
		}),
		AuditDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodeward_audit_dropped_total", Help: "Audit records deliberately not written, by reason (rate_limited: a caller uid's denials beyond the rate limit).",
		}, []string{"reason"}),
		AuditReopen: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodeward_audit_reopen_errors_total", Help: "Audit file reopens (SIGUSR1) refused or failed; the agent keeps writing to the file it had.",
		}),
		TPMQuotes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodeward_tpm_quotes_total", Help: "TPM quotes taken and verified by the agent, by result (ok, error: PCR selectors withdrawn).",
		}, []string{"result"}),
		IntermRotation: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodeward_ca_intermediate_rotations_total", Help: "Rotations of the TPM-signed CA intermediate, by result (ok, error: retried, the current one stays valid).",
		}, []string{"result"}),
	}
	for _, c := range []prometheus.Collector{m.RPCs, m.RPCDuration, m.OpenStreams, m.Issued, m.Denied, m.Attestation,
		m.AttestFailures, m.Minted, m.Rotations, m.RotationFails, m.Revocations, m.RevocationDelay, m.Reloads, m.AuditErrors, m.AuditDropped, m.AuditReopen,
		m.TPMQuotes, m.IntermRotation} {
		f(c)
	}
	f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "nodeward_entries", Help: "Registration entries in the current policy.",
	}, entries))
	f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "nodeward_active_x509_svids", Help: "X.509-SVIDs held (one per entry in use), rotated before expiry.",
	}, svids))
	if lastQuote != nil {
		f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "nodeward_tpm_last_quote_timestamp_seconds", Help: "When the last TPM quote verified (Unix time; 0: none yet or no tpm section).",
		}, lastQuote))
	}
	if intermediateExpiry != nil {
		f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "nodeward_ca_intermediate_expiry_timestamp_seconds", Help: "When the CA intermediate expires (Unix time; 0: the root signs directly).",
		}, intermediateExpiry))
	}
	f(collectors.NewGoCollector())
	f(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.initLabels()
	return m
}

// initLabels exports every counter of a closed label set at zero from the
// start, so that rate() and increase() see the first event (an alert on
// config_reloads_total{result="error"} must fire on the first failed reload)
// and dashboards find their series on a fresh agent.
func (m *Metrics) initLabels() {
	for _, kind := range []string{"x509", "jwt"} {
		m.Issued.WithLabelValues(kind)
		m.Minted.WithLabelValues(kind)
	}
	for _, reason := range []string{"no_identity", "not_entitled", "attestation_failed", "identity_changed", "missing_header", "no_peer_credentials"} {
		m.Denied.WithLabelValues(reason)
	}
	for _, result := range []string{"ok", "error"} {
		m.Reloads.WithLabelValues(result)
		m.TPMQuotes.WithLabelValues(result)
		m.IntermRotation.WithLabelValues(result)
	}
	m.AuditDropped.WithLabelValues("rate_limited")
	for _, reason := range []string{"expired", "removed"} {
		m.RevocationDelay.WithLabelValues(reason)
	}
}
