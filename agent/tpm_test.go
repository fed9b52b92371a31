package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/nodeward/nodeward/agent/config"
	"github.com/nodeward/nodeward/attestors/tpm"
	"github.com/nodeward/nodeward/test/swtpm"
)

// tpmSection is a tpm section for an agent that is handed its TPM
// (WithTPM): the device path is never opened.
func tpmSection(roots string, extra string) string {
	return fmt.Sprintf("tpm:\n  device: /dev/handed-in-by-the-test\n  ek_roots: %s\n  pcrs: [7]\n  quote_interval: 1h\n%s", roots, extra)
}

func ids(xc *workloadapi.X509Context) []string {
	var out []string
	for _, s := range xc.SVIDs {
		out = append(out, strings.TrimPrefix(s.ID.String(), "spiffe://"+td+"/"))
	}
	slices.Sort(out)
	return out
}

// TestTPMNodeSelectors: entries can require the node's EK hash, EK CA and
// PCR values; extending PCR 7 (as a Secure Boot change would) and SIGHUP
// make the entry that requires the old value stop issuing, on open streams
// too; the agent's own identity is in its status.
func TestTPMNodeSelectors(t *testing.T) {
	sim, tp := swtpm.Start(t)
	ctx := ctxT(t)
	ek, err := tp.EK(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pcrs, err := tp.ReadPCRs(ctx, []int{7})
	if err != nil {
		t.Fatal(err)
	}
	pcr7 := hex.EncodeToString(pcrs[7])
	entry := func(id, sel string) string {
		return fmt.Sprintf("  - spiffe_id: spiffe://%s/%s\n    hint: %s\n    selectors: [unix:uid:%d, \"unix:path:%s\", \"%s\"]\n",
			td, id, id, os.Geteuid(), selfExe(), sel)
	}
	cfg := testConfig(t, tpmSection(sim.RootsPEM, "")+"entries:\n"+
		entry("boot-state", "tpm:pcr:sha256:7:"+pcr7)+
		entry("this-node", "tpm:ek-hash:"+ek.Hash())+
		entry("other-node", "tpm:ek-hash:"+strings.Repeat("0", 64)))
	r := startAgent(t, cfg, WithTPM(tp))

	st := r.agent.Status()
	if st.Node == nil || st.Node.SPIFFEID != "spiffe://"+td+"/nodeward/agent/tpm/"+ek.Hash() ||
		!slices.Contains(st.Node.Selectors, "tpm:pcr:sha256:7:"+pcr7) || st.Node.PCRs["7"] != pcr7 {
		t.Fatalf("status node = %+v", st.Node)
	}
	if !slices.ContainsFunc(st.Node.Selectors, func(s string) bool { return strings.HasPrefix(s, "tpm:ek-ca:") }) {
		t.Fatalf("no tpm:ek-ca selector although the EK chain verified: %v", st.Node.Selectors)
	}

	var (
		mu      sync.Mutex
		updates [][]string
	)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c, err := workloadapi.New(wctx, workloadapi.WithAddr(r.addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go func() {
		_ = c.WatchX509Context(wctx, x509Watch{func(xc *workloadapi.X509Context) {
			mu.Lock()
			updates = append(updates, ids(xc))
			mu.Unlock()
		}})
	}()
	latest := func() []string {
		mu.Lock()
		defer mu.Unlock()
		if len(updates) == 0 {
			return nil
		}
		return updates[len(updates)-1]
	}
	waitFor(t, "stream with boot-state and this-node", func() bool { return slices.Equal(latest(), []string{"boot-state", "this-node"}) })

	// The Secure Boot state changes: PCR 7 is extended. SIGHUP (Reload)
	// re-quotes; the entry requiring the old value stops issuing.
	d := sha256.Sum256([]byte("db update"))
	if err := tp.ExtendPCR(ctx, 7, d[:]); err != nil {
		t.Fatal(err)
	}
	if err := r.agent.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "stream without boot-state", func() bool { return slices.Equal(latest(), []string{"this-node"}) })
	if ok := promtest.ToFloat64(r.agent.metrics.TPMQuotes.WithLabelValues("ok")); ok < 1 {
		t.Errorf("nodeward_tpm_quotes_total{result=ok} = %v after a re-quote", ok)
	}
	if ts := metricValue(t, r.agent, "nodeward_tpm_last_quote_timestamp_seconds"); ts < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("nodeward_tpm_last_quote_timestamp_seconds = %v", ts)
	}
	xc, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr(r.addr))
	if err != nil || !slices.Equal(ids(xc), []string{"this-node"}) {
		t.Fatalf("after the PCR change: %v %v", xc, err)
	}
}

type x509Watch struct {
	f func(*workloadapi.X509Context)
}

func (w x509Watch) OnX509ContextUpdate(c *workloadapi.X509Context) { w.f(c) }
func (x509Watch) OnX509ContextWatchError(error)                    {}

// TestTPMRootedCA: with ca.key tpm the root key is the TPM's persisted
// key; SVIDs carry a software intermediate that rotates without changing
// the bundle; the root survives an agent and TPM restart.
func TestTPMRootedCA(t *testing.T) {
	sim, tp := swtpm.Start(t)
	ctx := ctxT(t)
	cfg := testConfig(t, tpmSection(sim.RootsPEM, "ca:\n  key: tpm\n  intermediate_ttl: 4s\n")+"entries:\n"+selfEntry("web", ""))
	r := startAgent(t, cfg, WithTPM(tp))
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "ca_key.pem")); !os.IsNotExist(err) {
		t.Fatalf("a software root key exists with ca.key tpm: %v", err)
	}
	signer, err := tp.SigningKey(ctx, config.DefaultTPMKeyHandle)
	if err != nil {
		t.Fatal(err)
	}
	roots := r.agent.ca.X509Authorities()
	if !roots[0].PublicKey.(*ecdsa.PublicKey).Equal(signer.Public()) {
		t.Fatal("the trust bundle's root is not the TPM key")
	}
	bundle := x509bundle.FromX509Authorities(r.agent.ca.TrustDomain(), roots)
	first, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(r.addr))
	if err != nil {
		t.Fatal(err)
	}
	if len(first.Certificates) != 2 {
		t.Fatalf("chain of %d certificates, want leaf + intermediate", len(first.Certificates))
	}
	inter := first.Certificates[1]
	if st := r.agent.Status(); st.CA.Key != "tpm" || st.CA.IntermediateNotAfter == nil {
		t.Fatalf("status ca = %+v", st.CA)
	}
	// The intermediate (4s) rotates at half its life; the bundle stays.
	waitFor(t, "intermediate rotation", func() bool { return !r.agent.ca.Intermediate().Equal(inter) })
	fresh, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(r.addr))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "an SVID from the new intermediate", func() bool {
		fresh, err = workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(r.addr))
		return err == nil && !fresh.Certificates[1].Equal(inter)
	})
	for name, sv := range map[string]*x509svid.SVID{"before rotation": first, "after rotation": fresh} {
		if _, _, err := x509svid.Verify(sv.Certificates, bundle); err != nil {
			t.Errorf("SVID %s does not verify against the unchanged bundle: %v", name, err)
		}
	}
	if !slices.EqualFunc(r.agent.ca.X509Authorities(), roots, func(a, b *x509.Certificate) bool { return a.Equal(b) }) {
		t.Fatal("the bundle changed with the intermediate")
	}
	if n := promtest.ToFloat64(r.agent.metrics.IntermRotation.WithLabelValues("ok")); n < 1 {
		t.Errorf("nodeward_ca_intermediate_rotations_total{result=ok} = %v", n)
	}
	if exp := metricValue(t, r.agent, "nodeward_ca_intermediate_expiry_timestamp_seconds"); exp < float64(time.Now().Unix()) {
		t.Errorf("nodeward_ca_intermediate_expiry_timestamp_seconds = %v, want in the future", exp)
	}

	// Restart the TPM and a new agent on the same data dir: same root.
	sim.Stop(tp)
	_, tp2 := swtpm.StartOnState(t, sim.StateDir)
	a2, err := New(cfg, slog.New(slog.DiscardHandler), WithTPM(tp2))
	if err != nil {
		t.Fatal(err)
	}
	if !a2.ca.X509Authorities()[0].Equal(roots[0]) {
		t.Fatal("the root changed across an agent and TPM restart")
	}
}

// TestTPMStartupFailures: a configured TPM that is missing, or whose EK
// chain does not verify, stops the agent at start, and never leaves a
// software root key behind.
func TestTPMStartupFailures(t *testing.T) {
	cfg := testConfig(t, "tpm:\n  device: /dev/no-such-tpm\nca:\n  key: tpm\n")
	_, err := New(cfg, nil)
	if err == nil || !errors.Is(err, tpm.ErrOpen) || !strings.Contains(err.Error(), "/dev/no-such-tpm") {
		t.Fatalf("missing TPM: %v, want a tpm.ErrOpen naming the device", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "ca_key.pem")); !os.IsNotExist(err) {
		t.Fatal("a missing TPM fell back to a software CA key")
	}

	_, tp := swtpm.Start(t)
	wrongRoots := filepath.Join(t.TempDir(), "roots.pem")
	if err := os.WriteFile(wrongRoots, pemCert(selfSignedCA(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg = testConfig(t, tpmSection(wrongRoots, ""))
	if _, err := New(cfg, nil, WithTPM(tp)); !errors.Is(err, tpm.ErrEKChain) {
		t.Fatalf("EK chain against a wrong root: %v, want tpm.ErrEKChain", err)
	}
}

// metricValue reads a gauge from the agent's registry.
func metricValue(t *testing.T, a *Agent, name string) float64 {
	t.Helper()
	mfs, err := a.metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

func selfSignedCA(t *testing.T) *x509.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "not a TPM vendor"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
