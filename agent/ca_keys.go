package agent

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodeward/nodeward/agent/ca"
	"github.com/nodeward/nodeward/attestors/tpm"
	"github.com/nodeward/nodeward/internal/audit"
)

// caEvent turns a CA key lifecycle step into an audit record ("ca_prepare",
// "ca_activate", "ca_retire", "ca_drop", "ca_taint"); it holds the
// authority id (a public key hash), never key material.
func (a *Agent) caEvent(e ca.KeyEvent) {
	if a == nil || a.obs == nil {
		return
	}
	exp := e.Expires
	a.obs.record(audit.Record{Event: "ca_" + e.Action, Decision: "allow", Kind: e.Kind, Serial: e.ID, ExpiresAt: &exp})
}

// caCollector exports the CA's authorities: how many per kind and state,
// and the earliest expiry per kind and state (low cardinality: no ids).
type caCollector struct {
	c                   *ca.CA
	authorities, expiry *prometheus.Desc
}

func newCACollector(c *ca.CA) *caCollector {
	return &caCollector{c: c,
		authorities: prometheus.NewDesc("nodeward_ca_authorities", "CA keys by kind (x509 root, jwt) and state (prepared, active, retired, tainted).", []string{"kind", "state"}, nil),
		expiry:      prometheus.NewDesc("nodeward_ca_authority_expiry_timestamp_seconds", "Earliest expiry (Unix time) of the CA keys of each kind and state.", []string{"kind", "state"}, nil),
	}
}

func (cc *caCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- cc.authorities
	ch <- cc.expiry
}

func (cc *caCollector) Collect(ch chan<- prometheus.Metric) {
	type key struct{ kind, state string }
	n := map[key]int{}
	exp := map[key]time.Time{}
	for _, kind := range []string{ca.KindX509, ca.KindJWT} {
		for _, st := range []string{ca.StatePrepared, ca.StateActive, ca.StateRetired, ca.StateTainted} {
			n[key{kind, st}] = 0
		}
	}
	for _, s := range cc.c.Authorities() {
		k := key{s.Kind, s.State}
		n[k]++
		if e, ok := exp[k]; !s.Expires.IsZero() && (!ok || s.Expires.Before(e)) {
			exp[k] = s.Expires
		}
	}
	for k, v := range n {
		ch <- prometheus.MustNewConstMetric(cc.authorities, prometheus.GaugeValue, float64(v), k.kind, k.state)
	}
	for k, t := range exp {
		ch <- prometheus.MustNewConstMetric(cc.expiry, prometheus.GaugeValue, float64(t.Unix()), k.kind, k.state)
	}
}

// tpmCAKeys is the TPM as the CA's root key store (ca.TPMKeys).
type tpmCAKeys struct{ tp *tpm.TPM }

var _ ca.TPMKeys = tpmCAKeys{}

func (k tpmCAKeys) LoadOrCreateSigningKey(ctx context.Context, handle uint32) (crypto.Signer, error) {
	s, err := k.tp.SigningKey(ctx, handle)
	if err != nil {
		return nil, fmt.Errorf("ca.key tpm: %w", err)
	}
	return s, nil
}

func (k tpmCAKeys) LoadSigningKey(ctx context.Context, handle uint32) (crypto.Signer, error) {
	s, err := k.tp.LoadSigningKey(ctx, handle)
	if errors.Is(err, tpm.ErrNoKey) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ca.key tpm: %w", err)
	}
	return s, nil
}

func (k tpmCAKeys) CreateSigningKey(ctx context.Context, handle uint32) (crypto.Signer, error) {
	s, err := k.tp.CreateSigningKey(ctx, handle)
	if err != nil {
		return nil, fmt.Errorf("ca.key tpm: %w", err)
	}
	return s, nil
}

func (k tpmCAKeys) EvictSigningKey(ctx context.Context, handle uint32) error {
	err := k.tp.EvictSigningKey(ctx, handle)
	if errors.Is(err, tpm.ErrUnsupported) {
		return fmt.Errorf("%w: %w", ca.ErrForeignKey, err)
	}
	return err
}
