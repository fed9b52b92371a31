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

// TestDevIDFilesWorkWithSpireAgentAndNodeward: a DevID key provisioned by
// `nodeward node devid` in a swtpm (Unix socket) attests a real spire-agent
// with SPIRE's own tpm_devid plugin, and then nodeward with the same files
// and TPM: both get the same agent ID, so an operator can swap one agent
// for the other on a provisioned node.
func TestDevIDFilesWorkWithSpireAgentAndNodeward(t *testing.T) {
	sim := swtpm.StartUnix(t)
	dir := testutil.SocketDir(t)
	devidDir := filepath.Join(dir, "devid")
	for _, typ := range []string{"rsa", "ecc"} {
		out := filepath.Join(devidDir, typ)
		if _, errOut, code := testutil.Run(t, bin, nil, "node", "devid", "--tpm", sim.Addr, "--type", typ, "--cn", "swap-"+typ, "--out", out); code != 0 {
			t.Fatalf("node devid %s: %d %s", typ, code, errOut)
		}
	}
	ca := spire.NewCA(t, dir, "devid-ca")
	certFor := func(typ string) string {
		csrPEM, err := os.ReadFile(filepath.Join(devidDir, typ, "devid.csr"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := pem.Decode(csrPEM)
		csr, err := x509.ParseCertificateRequest(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(devidDir, typ, "devid.crt")
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.DevIDCert(t, csr.Subject.CommonName, csr.PublicKey)[0].Raw}), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	s := spire.Start(t, spire.Options{TrustDomain: "swap.test", TPMDevIDCA: ca.PEMPath, TPMEndorsementCA: sim.RootsPEM})
	bundle := filepath.Join(dir, "spire-bundle.pem")
	if err := os.WriteFile(bundle, s.BundlePEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{"rsa", "ecc"} {
		files := spire.AgentDevID{Cert: certFor(typ), Pub: filepath.Join(devidDir, typ, "devid.pub"),
			Priv: filepath.Join(devidDir, typ, "devid.priv"), Device: sim.Path}
		// spire-agent first, with SPIRE's own tpm_devid plugin.
		sa := spire.StartAgent(t, s, spire.AgentOptions{TPMDevID: &files})
		if !strings.Contains(sa.Log(), "Node attestation was successful") || !strings.Contains(sa.Log(), sa.ID) {
			t.Fatalf("%s: spire-agent did not attest as %s:\n%s", typ, sa.ID, sa.Log())
		}
		sa.Stop()

		// Then nodeward, with the same files and TPM.
		admin := "127.0.0.1:" + testutil.FreePort(t)
		extra := fmt.Sprintf("admin_listen: %s\ntpm:\n  address: %s\nserver:\n  address: %s\n  trust_bundle: %s\n  node_attestation:\n    tpm_devid:\n      cert: %s\n      pub: %s\n      priv: %s\n",
			admin, sim.Addr, s.Addr, bundle, files.Cert, files.Pub, files.Priv)
		nodeDir := filepath.Join(dir, "node-"+typ)
		if err := os.Mkdir(nodeDir, 0o755); err != nil {
			t.Fatal(err)
		}
		cfg, sock := testutil.WriteConfig(t, nodeDir, s.TrustDomain, extra)
		a := testutil.StartAgent(t, bin, cfg, sock)
		testutil.WaitServing(t, sock, 60*time.Second)
		out, errOut, code := testutil.Run(t, bin, nil, "status", "--admin", admin)
		if code != 0 || !strings.Contains(out, sa.ID) {
			t.Fatalf("%s: nodeward's agent ID is not spire-agent's %s: %d\n%s%s\n%s", typ, sa.ID, code, out, errOut, a.Log())
		}
		_ = a.Cmd.Process.Signal(os.Interrupt)
		_ = a.Cmd.Wait()
	}
}
