package spire_test

import (
	"context"
	"testing"
	"time"

	"github.com/nodeward/nodeward/agent/spire"
	spiretest "github.com/nodeward/nodeward/test/spire"
)

// TestReattestAfterSVIDExpiredDuringOutage: an x509pop node whose agent
// SVID expires while the server is down cannot renew it (an expired client
// certificate opens no connection), so Run attests again once the server
// is back, by itself, and calls work again.
func TestReattestAfterSVIDExpiredDuringOutage(t *testing.T) {
	ca := spiretest.NewCA(t, t.TempDir(), "node-ca")
	s := spiretest.Start(t, spiretest.Options{TrustDomain: "outage.test", X509PoPCABundle: ca.PEMPath, AgentTTL: 20 * time.Second})
	chain, key := ca.NodeCert(t, "node-outage", spiretest.ECDSAP256)
	att, err := spire.X509PoP(chain, key)
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, s, t.TempDir(), att)
	defer c.Close()
	if err := c.Start(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	_, firstExp := c.AgentSVID()
	s.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()

	// Wait out the agent SVID while the server is down.
	for time.Now().Before(firstExp.Add(time.Second)) {
		time.Sleep(200 * time.Millisecond)
	}
	if _, exp := c.AgentSVID(); exp.After(firstExp) {
		t.Fatal("the agent SVID changed while the server was down")
	}
	s.Resume()
	deadline := time.Now().Add(90 * time.Second) // Run's backoff is capped at a minute
	for {
		if _, exp := c.AgentSVID(); exp.After(time.Now()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the node did not attest again after the outage\n%s", s.Log())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := c.SyncEntries(ctxT(t)); err != nil {
		t.Fatalf("calls after re-attestation: %v", err)
	}
}
