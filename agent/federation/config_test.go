package federation

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/nodeward/nodeward/agent/config"
)

// TestFromConfig: a parsed federation section maps onto an Endpoint and a
// Fetcher that start (real files, a real listener).
func TestFromConfig(t *testing.T) {
	dir := t.TempDir()
	pki := newWebPKI(t, dir)
	certFile, keyFile, _ := pki.serverFiles(t, dir)
	ca := newTestCA(t, tdB)
	boot := writeFile(t, dir, "b.bundle", marshal(t, bundleOf(t, 4, ca)), 0o644)
	yaml := fmt.Sprintf(`trust_domain: a.test
data_dir: %s
federation:
  bundle_endpoint:
    listen: 127.0.0.1:0
    profile: https_web
    cert: %s
    key: %s
    refresh_hint: 30s
  federates_with:
    b.test:
      url: https://127.0.0.1:1/
      profile: https_spiffe
      endpoint_spiffe_id: spiffe://b.test/nodeward/bundle-endpoint
      bundle: %s
    c.test:
      url: https://127.0.0.1:2/
      profile: https_web
      ca: %s
`, filepath.Join(dir, "data"), certFile, keyFile, boot, pki.rootFile)
	cfg, err := config.Parse("agent.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	ec := EndpointConfigFrom(cfg.Federation.BundleEndpoint, nil)
	if ec.Profile != ProfileHTTPSWeb || ec.RefreshHint != 30*time.Second || ec.CertFile != certFile {
		t.Errorf("endpoint config = %+v", ec)
	}
	s := startSide(t, tdA, ec)
	resp, err := webClient(pki.root).Get(s.url)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("endpoint from config: HTTP %d", resp.StatusCode)
	}

	fc := FetcherConfigFrom(cfg.Federation, cfg.DataDir, nil)
	if fc.CacheDir != filepath.Join(dir, "data", "federation") || len(fc.Peers) != 2 {
		t.Fatalf("fetcher config = %+v", fc)
	}
	if p := fc.Peers[0]; p.EndpointID != EndpointID(tdB) || p.BundleFile != boot || p.Profile != ProfileHTTPSSPIFFE {
		t.Errorf("peer b.test = %+v", p)
	}
	f, err := NewFetcher(fc)
	if err != nil {
		t.Fatal(err)
	}
	if st := f.Status(); len(st) != 2 || st[0].Source != "bootstrap" || st[0].Sequence != 4 || st[1].Source != "none" {
		t.Errorf("status = %+v", st)
	}
}
