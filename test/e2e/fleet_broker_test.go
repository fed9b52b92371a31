package e2e

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/nodeward/nodeward/test/spire"
	"github.com/nodeward/nodeward/test/testutil"
)

// TestFleetBrokerAndSVIDFiles: in fleet mode the broker inside the agent
// and its svid_files work unchanged. The broker's own identity comes from
// the SPIRE server; the real IdP validates its JWT-SVID (signed by the
// server) against the JWT bundle the node's Workload API serves, and issues a token; the SVID files hold
// a SPIRE-signed X.509-SVID that verifies against the server's bundle.
func TestFleetBrokerAndSVIDFiles(t *testing.T) {
	s := spire.Start(t, spire.Options{TrustDomain: "fleetbroker.test"})
	dir := testutil.SocketDir(t)
	bundle := filepath.Join(dir, "spire-bundle.pem")
	if err := os.WriteFile(bundle, s.BundlePEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	nodeID := s.ID("/node/broker-host")
	brokerID := s.ID("/broker")
	s.EntryCreate(spire.Entry{ParentID: nodeID, SPIFFEID: brokerID, Selectors: []string{fmt.Sprintf("unix:uid:%d", os.Geteuid()), "unix:path:" + bin}})
	admin := "127.0.0.1:" + testutil.FreePort(t)
	idp := testutil.StartIdPLater(t)
	bsock := filepath.Join(dir, "broker.sock")
	files := filepath.Join(dir, "files")
	if err := os.Mkdir(files, 0o755); err != nil {
		t.Fatal(err)
	}
	extra := fmt.Sprintf(`admin_listen: %s
server:
  address: %s
  trust_bundle: %s
  sync_interval: 1s
  node_attestation:
    join_token: %s
broker:
  listen: %s
  upstreams:
    - name: corp
      token_endpoint: %s/token
      grant: token-exchange
      client_id: nodeward-broker
      svid_audience: nodeward-idp
  svid_files:
    - x509_svid: %s/svid.pem
      x509_key: %s/svid_key.pem
      x509_bundle: %s/bundle.pem
`, admin, s.Addr, bundle, s.TokenGenerate(nodeID), bsock, idp.URL, files, files, files)
	cfg, sock := testutil.WriteConfig(t, dir, s.TrustDomain, extra)
	a := testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 30*time.Second)
	// In fleet mode the SPIRE server's JWT keys are published by SPIRE's
	// oidc-discovery-provider, which reads them from a local agent's
	// Workload API. This handler plays that part (the provider is not
	// built here): it serves the JWT bundle this node's Workload API gives.
	s.EntryCreate(spire.Entry{ParentID: nodeID, SPIFFEID: s.ID("/e2e-test"), Selectors: []string{fmt.Sprintf("unix:uid:%d", os.Geteuid()), "unix:path:" + exe(t)}})
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		set, err := workloadapi.FetchJWTBundles(ctx, workloadapi.WithAddr("unix://"+sock))
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		b, ok := set.Get(spiffeid.RequireTrustDomainFromString(s.TrustDomain))
		if !ok {
			http.Error(w, "no JWT bundle", http.StatusServiceUnavailable)
			return
		}
		data, err := b.Marshal()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_, _ = w.Write(data)
	}))
	defer jwks.Close()
	idp.Start(t, jwks.URL, "nodeward-idp", s.TrustDomain, 600)

	deadline := time.Now().Add(30 * time.Second)
	for {
		out, errOut, code := testutil.Run(t, bin, nil, "token", "--socket", bsock, "--upstream", "corp", "--audience", "api")
		if code == 0 && len(strings.TrimSpace(out)) > 20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no token from the broker inside a fleet-mode agent: %d %s %s\nagent log:\n%s", code, out, errOut, a.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The SVID files: a SPIRE-signed SVID for the broker's ID.
	var certPEM []byte
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		var err error
		if certPEM, err = os.ReadFile(filepath.Join(files, "svid.pem")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("svid_files wrote no svid.pem: %v\n%s", err, a.Log())
		}
	}
	var chain []*x509.Certificate
	for rest := certPEM; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	xb, err := x509bundle.Parse(spiffeid.RequireTrustDomainFromString(s.TrustDomain), s.BundlePEM())
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := x509svid.Verify(chain, xb)
	if err != nil || id.String() != brokerID {
		t.Fatalf("svid.pem: %v %v, want a SPIRE-signed SVID for %s", id, err, brokerID)
	}
	if st, err := os.Stat(filepath.Join(files, "svid_key.pem")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("svid_key.pem: %v %v", st, err)
	}
	if b, err := os.ReadFile(filepath.Join(files, "bundle.pem")); err != nil || !strings.Contains(string(b), "BEGIN CERTIFICATE") {
		t.Fatalf("bundle.pem: %v", err)
	}
}
