package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodeward/nodeward/attestors/tpm"
	"github.com/nodeward/nodeward/test/swtpm"
	"github.com/nodeward/nodeward/test/testutil"
)

// TestNodeAttestAndVerifyCLI: `nodeward node attest` prints evidence from
// a real swtpm; `nodeward node verify` checks it, including credential
// activation with that TPM; a wrong nonce or wrong roots fail.
func TestNodeAttestAndVerifyCLI(t *testing.T) {
	sim := swtpm.StartTCP(t)
	dir := t.TempDir()
	nonce := "00112233445566778899aabbccddeeff"
	out, errOut, code := testutil.Run(t, bin, nil, "node", "attest", "--nonce", nonce, "--tpm", sim.Addr, "--pcrs", "0,7")
	if code != 0 {
		t.Fatalf("node attest: %d %s", code, errOut)
	}
	var ev tpm.Evidence
	if err := json.Unmarshal([]byte(out), &ev); err != nil || len(ev.EKCertChain) == 0 || len(ev.PCRs) != 2 || ev.PCRBank != "sha256" {
		t.Fatalf("evidence: %v\n%s", err, out)
	}
	evPath := filepath.Join(dir, "evidence.json")
	if err := os.WriteFile(evPath, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = testutil.Run(t, bin, nil, "node", "verify", "--nonce", nonce, "--roots", sim.RootsPEM, "--tpm", sim.Addr, evPath)
	var res struct {
		Verified   bool     `json:"verified"`
		EKHash     string   `json:"ek_hash"`
		Activation string   `json:"credential_activation"`
		Selectors  []string `json:"selectors"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || !res.Verified || !strings.HasPrefix(res.Activation, "ok") || len(res.Selectors) != 4 {
		t.Fatalf("node verify: %d %s %s", code, out, errOut)
	}
	if _, errOut, code := testutil.Run(t, bin, nil, "node", "verify", "--nonce", "ffffffffffffffff", "--roots", sim.RootsPEM, "--skip-activation", evPath); code != 1 || !strings.Contains(errOut, "nonce does not match") {
		t.Fatalf("wrong nonce: %d %s", code, errOut)
	}
	if _, errOut, code := testutil.Run(t, bin, nil, "node", "verify", "--nonce", nonce, "--roots", "/etc/ssl/certs/ca-certificates.crt", "--skip-activation", evPath); code != 1 || !strings.Contains(errOut, "EK certificate chain not verified") {
		t.Fatalf("wrong roots: %d %s", code, errOut)
	}
	if _, errOut, code := testutil.Run(t, bin, nil, "node", "attest", "--nonce", "zz"); code != 2 || !strings.Contains(errOut, "--nonce") {
		t.Fatalf("bad nonce flag: %d %s", code, errOut)
	}
}

// TestAgentWithTPMOverTCP: the built agent with `tpm: {address: tcp://…}`
// and `ca: {key: tpm}` attests its node, issues to an entry that requires
// the node's EK, shows its TPM identity in `nodeward status`, and keeps its
// root across a restart.
func TestAgentWithTPMOverTCP(t *testing.T) {
	sim := swtpm.StartTCP(t)
	// The EK hash, read through the CLI (which opens and closes the TPM).
	out, errOut, code := testutil.Run(t, bin, nil, "node", "attest", "--nonce", "0102030405060708", "--tpm", sim.Addr)
	if code != 0 {
		t.Fatalf("node attest: %s", errOut)
	}
	var ev tpm.Evidence
	if err := json.Unmarshal([]byte(out), &ev); err != nil {
		t.Fatal(err)
	}
	res, err := tpm.Verify(&ev, []byte{1, 2, 3, 4, 5, 6, 7, 8}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := testutil.SocketDir(t)
	admin := "127.0.0.1:" + testutil.FreePort(t)
	extra := fmt.Sprintf("admin_listen: %s\ntpm:\n  address: %s\n  ek_roots: %s\n  pcrs: [7]\nca:\n  key: tpm\nentries:\n  - spiffe_id: spiffe://example.org/on-this-node\n    selectors: [unix:uid:%d, \"unix:path:%s\", \"tpm:ek-hash:%s\"]\n",
		admin, sim.Addr, sim.RootsPEM, os.Geteuid(), bin, res.EKHash)
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", extra)
	a := testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 20*time.Second)
	out, errOut, code = testutil.Run(t, bin, nil, "fetch", "x509", "--socket", sock)
	if code != 0 || !strings.Contains(out, "spiffe://example.org/on-this-node") {
		t.Fatalf("fetch: %d %s %s\n%s", code, out, errOut, a.Log())
	}
	out, _, code = testutil.Run(t, bin, nil, "status", "--admin", admin)
	if code != 0 || !strings.Contains(out, "agent id:     spiffe://example.org/nodeward/agent/tpm/"+res.EKHash) || !strings.Contains(out, "ca key:       tpm") {
		t.Fatalf("status: %s", out)
	}
	bundle1, _, _ := testutil.Run(t, bin, nil, "fetch", "bundles", "--socket", sock)
	_ = a.Cmd.Process.Signal(os.Interrupt)
	_ = a.Cmd.Wait()

	a2 := testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 20*time.Second)
	bundle2, _, _ := testutil.Run(t, bin, nil, "fetch", "bundles", "--socket", sock)
	if bundle1 == "" || bundle1 != bundle2 {
		t.Fatalf("the TPM-rooted bundle changed across a restart:\n%s\n---\n%s\n%s", bundle1, bundle2, a2.Log())
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "ca_key.pem")); !os.IsNotExist(err) {
		t.Fatal("a software root key was written with ca.key tpm")
	}
}

// TestAgentRefusesToStartWithoutItsTPM: a configured TPM that cannot be
// reached is a startup error naming it (exit 1), not a software fallback.
func TestAgentRefusesToStartWithoutItsTPM(t *testing.T) {
	dir := testutil.SocketDir(t)
	cfg, _ := testutil.WriteConfig(t, dir, "example.org", "tpm:\n  address: tcp://127.0.0.1:1\nca:\n  key: tpm\n")
	_, errOut, code := testutil.Run(t, bin, nil, "agent", "--config", cfg)
	if code != 1 || !strings.Contains(errOut, "tpm (tcp://127.0.0.1:1)") {
		t.Fatalf("agent without its TPM: exit %d, %s", code, errOut)
	}
}
