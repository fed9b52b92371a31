package e2e

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodeward/nodeward/test/spire"
	"github.com/nodeward/nodeward/test/swtpm"
	"github.com/nodeward/nodeward/test/testutil"
)

// TestFleetTPMDevIDNode provisions a DevID key in a real swtpm with
// `nodeward node devid`, has a DevID CA sign its CSR, and runs the real
// binary in fleet mode with tpm_devid node attestation against a real
// spire-server: the node attests with its TPM, a node alias on the DevID
// subject gives it its workload entries, and after `spire-server agent
// evict` it re-attests by itself (no operator action) and keeps syncing.
func TestFleetTPMDevIDNode(t *testing.T) {
	sim := swtpm.StartTCP(t)
	dir := testutil.SocketDir(t)
	devidDir := filepath.Join(dir, "devid")
	out, errOut, code := testutil.Run(t, bin, nil, "node", "devid", "--tpm", sim.Addr, "--type", "rsa", "--cn", "edge-17", "--out", devidDir)
	if code != 0 {
		t.Fatalf("node devid: %d %s %s", code, out, errOut)
	}
	if st, err := os.Stat(filepath.Join(devidDir, "devid.priv")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("devid.priv: %v %v, want mode 0600", st, err)
	}
	// A second run never replaces the provisioned key.
	if _, errOut, code := testutil.Run(t, bin, nil, "node", "devid", "--tpm", sim.Addr, "--cn", "edge-17", "--out", devidDir); code != 2 || !strings.Contains(errOut, "already exists") {
		t.Fatalf("node devid over an existing key: %d %s", code, errOut)
	}
	csrPEM, err := os.ReadFile(filepath.Join(devidDir, "devid.csr"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(csrPEM)
	if b == nil {
		t.Fatal("devid.csr is not PEM")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil || csr.CheckSignature() != nil || csr.Subject.CommonName != "edge-17" {
		t.Fatalf("devid.csr: %v", err)
	}
	ca := spire.NewCA(t, dir, "devid-ca")
	certPath := filepath.Join(devidDir, "devid.crt")
	chain := ca.DevIDCert(t, csr.Subject.CommonName, csr.PublicKey)
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: chain[0].Raw}), 0o644); err != nil {
		t.Fatal(err)
	}

	s := spire.Start(t, spire.Options{TrustDomain: "devid.test", TPMDevIDCA: ca.PEMPath, TPMEndorsementCA: sim.RootsPEM})
	alias := s.ID("/node/edge-17")
	s.EntryCreate(spire.Entry{Node: true, SPIFFEID: alias, Selectors: []string{"tpm_devid:subject:cn:edge-17"}})
	sels := []string{fmt.Sprintf("unix:uid:%d", os.Geteuid()), "unix:path:" + exe(t)}
	svc := s.ID("/svc/on-edge")
	s.EntryCreate(spire.Entry{ParentID: alias, SPIFFEID: svc, Selectors: sels})
	// The guardrails report on the server's entries and enforce nothing:
	// this one (every root process) is flagged broad, and ambiguous with the
	// one above (the test runs as root), and still synced.
	s.EntryCreate(spire.Entry{ParentID: alias, SPIFFEID: s.ID("/svc/any-root"), Selectors: []string{"unix:uid:0"}})

	bundle := filepath.Join(dir, "spire-bundle.pem")
	if err := os.WriteFile(bundle, s.BundlePEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	n := &fleetNode{nodeID: alias, admin: "127.0.0.1:" + testutil.FreePort(t)}
	extra := fmt.Sprintf("admin_listen: %s\ntpm:\n  address: %s\nserver:\n  address: %s\n  trust_bundle: %s\n  sync_interval: 1s\n  node_attestation:\n    tpm_devid:\n      cert: %s\n      pub: %s\n      priv: %s\n",
		n.admin, sim.Addr, s.Addr, bundle, certPath, filepath.Join(devidDir, "devid.pub"), filepath.Join(devidDir, "devid.priv"))
	n.cfg, n.sock = testutil.WriteConfig(t, dir, s.TrustDomain, extra)

	// A DevID private blob others can read is refused, before any use.
	priv := filepath.Join(devidDir, "devid.priv")
	if err := os.Chmod(priv, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := testutil.Run(t, bin, nil, "agent", "--config", n.cfg); code == 0 || !strings.Contains(errOut, "chmod 600") {
		t.Fatalf("agent with a group-readable devid.priv: exit %d\n%s", code, errOut)
	}
	if err := os.Chmod(priv, 0o600); err != nil {
		t.Fatal(err)
	}
	n.agent = testutil.StartAgent(t, bin, n.cfg, n.sock)
	testutil.WaitServing(t, n.sock, 60*time.Second)
	svidFrom(t, n, svc, 30*time.Second)

	out, errOut, code = testutil.Run(t, bin, nil, "status", "--admin", n.admin)
	if code != 0 || !strings.Contains(out, s.ID("/spire/agent/tpm_devid/")) || !strings.Contains(out, "(2 entries") ||
		!strings.Contains(out, "guardrails:   2 findings") {
		t.Fatalf("status: %d\n%s%s", code, out, errOut)
	}
	if !strings.Contains(n.agent.Log(), `"msg":"policy (server entry; reported, not enforced): broad-selectors","spiffe_id":"spiffe://devid.test/svc/any-root"`) {
		t.Fatalf("no guardrail warning for the broad server entry:\n%s", n.agent.Log())
	}
	var agentID string
	for _, f := range strings.Fields(out) {
		if strings.HasPrefix(f, s.ID("/spire/agent/tpm_devid/")) {
			agentID = f
		}
	}

	// Evicted: the node proves itself again with its TPM, by itself, and
	// an entry created afterwards reaches it.
	s.AgentEvict(agentID)
	svc2 := s.ID("/svc/after-evict")
	s.EntryCreate(spire.Entry{ParentID: alias, SPIFFEID: svc2, Selectors: sels})
	svidFrom(t, n, svc2, 60*time.Second)
	if got := strings.Count(n.agent.Log(), `"msg":"node attested","component":"spire","attestor":"tpm_devid"`); got < 2 {
		t.Fatalf("%d tpm_devid attestations in the log, want the first and one after the eviction:\n%s", got, n.agent.Log())
	}
}

func exe(t *testing.T) string {
	t.Helper()
	p, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return p
}
