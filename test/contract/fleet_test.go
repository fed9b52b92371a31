package contract

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodeward/nodeward/agent"
	"github.com/nodeward/nodeward/agent/config"
	"github.com/nodeward/nodeward/test/spire"
)

// fleetHarness runs the agent in fleet mode against a real spire-server:
// entries are registered on the server under the node's join-token ID.
type fleetHarness struct {
	s      *spire.Server
	nodeID string
}

func (h *fleetHarness) TrustDomain() spiffeid.TrustDomain {
	return spiffeid.RequireTrustDomainFromString("fleet.test")
}

func (h *fleetHarness) Start(t *testing.T) string {
	h.s = spire.Start(t, spire.Options{TrustDomain: "fleet.test", CacheReloadInterval: time.Second})
	h.nodeID = h.s.ID("/node/contract")
	tok := h.s.TokenGenerate(h.nodeID)
	dir, err := os.MkdirTemp("", "nodeward-fleet-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	bundle := filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(bundle, h.s.BundlePEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "workload.sock")
	text := fmt.Sprintf("trust_domain: fleet.test\nsocket_path: %s\ndata_dir: %s\naudit_log: %s\nserver:\n  address: %s\n  trust_bundle: %s\n  sync_interval: 1s\n  node_attestation:\n    join_token: %s\n",
		sock, filepath.Join(dir, "data"), filepath.Join(dir, "audit.log"), h.s.Addr, bundle, tok)
	cfg, err := config.Parse(filepath.Join(dir, "agent.yaml"), []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(cfg, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatalf("agent: %v\nserver log:\n%s", err, h.s.Log())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	select {
	case <-a.Serving():
	case err := <-done:
		t.Fatalf("agent stopped: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("agent did not start serving")
	}
	return "unix://" + sock
}

func (h *fleetHarness) AddEntry(t *testing.T, e Entry) string {
	se := spire.Entry{ParentID: h.nodeID, SPIFFEID: h.s.ID(e.Path), Selectors: e.Selectors, Hint: e.Path,
		X509SVIDTTL: int(e.X509TTL / time.Second)}
	for _, f := range e.FederatesWith {
		se.FederatesWith = append(se.FederatesWith, "spiffe://"+f)
	}
	return h.s.EntryCreate(se)
}

func (h *fleetHarness) RemoveEntry(t *testing.T, id string) { h.s.EntryDelete(id) }

func (h *fleetHarness) ShortX509TTL() time.Duration { return 16 * time.Second }

// Federation registers a foreign trust domain's bundle on the server.
func (h *fleetHarness) Federation(t *testing.T) spiffeid.TrustDomain {
	h.s.BundleSet("spiffe://other.test", selfSignedPEM(t, "other.test"))
	return spiffeid.RequireTrustDomainFromString("other.test")
}

// Propagation: the server's entry cache reload (1 s) and the agent's sync
// interval (1 s), with room for a slow machine.
func (h *fleetHarness) Propagation() time.Duration { return 5 * time.Second }

func selfSignedPEM(t *testing.T, td string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u := spiffeid.RequireTrustDomainFromString(td).ID().URL()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: td}, NotBefore: time.Now().Add(-time.Minute),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	tmpl.URIs = append(tmpl.URIs, u)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TestServerSource runs the contract against fleet mode (a real
// spire-server, join_token attestation).
func TestServerSource(t *testing.T) {
	Run(t, &fleetHarness{})
}
