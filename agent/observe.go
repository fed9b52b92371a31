package agent

import (
	"log/slog"
	"sync"
	"time"

	"github.com/nodeward/nodeward/agent/identity"
	"github.com/nodeward/nodeward/agent/metrics"
	"github.com/nodeward/nodeward/agent/policy"
	"github.com/nodeward/nodeward/internal/audit"
	"github.com/nodeward/nodeward/workloadapi"
)

// observer feeds what the Workload API server and the identity store do to
// the metrics and the audit trail.
type observer struct {
	m     *metrics.Metrics
	audit *audit.Logger
	log   *slog.Logger

	mu      sync.Mutex
	streams map[string]int // open streams by RPC, for status
}

var (
	_ workloadapi.Observer = (*observer)(nil)
	_ identity.Observer    = (*observer)(nil)
)

func (o *observer) RPCDone(rpc, code string, d time.Duration) {
	o.m.RPCs.WithLabelValues(rpc, code).Inc()
	o.m.RPCDuration.WithLabelValues(rpc).Observe(d.Seconds())
}

func (o *observer) StreamOpen(rpc string, delta int) {
	o.m.OpenStreams.WithLabelValues(rpc).Add(float64(delta))
	o.mu.Lock()
	if o.streams == nil {
		o.streams = map[string]int{}
	}
	o.streams[rpc] += delta
	o.mu.Unlock()
}

// openStreams returns a copy of the open stream counts.
func (o *observer) openStreams() map[string]int {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make(map[string]int, len(o.streams))
	for k, v := range o.streams {
		out[k] = v
	}
	return out
}

func (o *observer) Issued(kind string, n int) { o.m.Issued.WithLabelValues(kind).Add(float64(n)) }

func (o *observer) Denied(reason string) { o.m.Denied.WithLabelValues(reason).Inc() }

func (o *observer) record(r audit.Record) {
	if err := o.audit.Log(r); err != nil { // counted by the Logger's hooks
		o.log.Error("audit log write failed", "err", err)
	}
}

func (o *observer) X509Minted(e *policy.Entry, sv *identity.X509SVID, rotation bool) {
	o.m.Minted.WithLabelValues("x509").Inc()
	ev := "mint"
	if rotation {
		ev = "rotate"
		o.m.Rotations.Inc()
	}
	exp := sv.SVID.Certificates[0].NotAfter
	o.record(audit.Record{Event: ev, Decision: "allow", Kind: "x509", SPIFFEID: e.SPIFFEID.String(),
		Serial: sv.Serial, ExpiresAt: &exp, EntryID: e.ID})
}

func (o *observer) X509RotationFailed(e *policy.Entry, err error) {
	o.m.RotationFails.Inc()
	o.record(audit.Record{Event: "rotate", Decision: "deny", Reason: err.Error(), Kind: "x509",
		SPIFFEID: e.SPIFFEID.String(), EntryID: e.ID})
}

func (o *observer) JWTMinted(*policy.Entry, *identity.JWTSVID) {
	o.m.Minted.WithLabelValues("jwt").Inc()
}

func (o *observer) Revoked(e *policy.Entry, reason string) {
	o.m.Revocations.Inc()
	delay := 0.0
	if reason == "expired" && !e.ExpiresAt.IsZero() {
		delay = max(0, time.Since(e.ExpiresAt).Seconds())
	}
	o.m.RevocationDelay.WithLabelValues(reason).Observe(delay)
	o.record(audit.Record{Event: "revoke", Decision: "deny", Reason: reason,
		SPIFFEID: e.SPIFFEID.String(), EntryID: e.ID})
}
