package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/nodeward/nodeward/test/spire"
	"github.com/nodeward/nodeward/test/testutil"
)

// fedNode is a standalone agent of its own trust domain with a bundle
// endpoint.
type fedNode struct {
	td, dir, endpoint, admin string
	agent                    *testutil.Agent
	sock, cfg                string
}

func (n *fedNode) writeConfig(t *testing.T, extra string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf(`admin_listen: %s
federation:
  bundle_endpoint:
    listen: %s
    profile: https_spiffe
    refresh_hint: 10s
%sentries:
  - spiffe_id: spiffe://%s/svc
    selectors: [unix:uid:%d, "unix:path:%s"]
`, n.admin, n.endpoint, extra, n.td, os.Geteuid(), exe)
	if extra != "" {
		body += "    federates_with: [" + map[string]string{"a.test": "b.test", "b.test": "a.test"}[n.td] + "]\n"
	}
	n.cfg, n.sock = testutil.WriteConfig(t, n.dir, n.td, body)
}

func (n *fedNode) start(t *testing.T) {
	t.Helper()
	n.agent = testutil.StartAgent(t, bin, n.cfg, n.sock)
	testutil.WaitServing(t, n.sock, 20*time.Second)
}

func (n *fedNode) stop(t *testing.T) {
	t.Helper()
	_ = n.agent.Cmd.Process.Signal(syscall.SIGTERM)
	_ = n.agent.Cmd.Wait()
}

// bootstrapBundle reads the node's bundle from its own bundle endpoint
// (what an operator hands the other side, as `spire-server bundle show`).
func (n *fedNode) bootstrapBundle(t *testing.T) string {
	t.Helper()
	// #nosec G402 -- the test fetches its own node's bundle to bootstrap the other side.
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, Timeout: 10 * time.Second}
	resp, err := c.Get("https://" + n.endpoint + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(b), "x509-svid") {
		t.Fatalf("bundle endpoint: %d %s", resp.StatusCode, b)
	}
	p := filepath.Join(t.TempDir(), n.td+".bundle.json")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestFederationTwoTrustDomains: two standalone agents in two trust
// domains (a.test, b.test) serve their bundles on https_spiffe bundle
// endpoints and fetch each other's. A go-spiffe mTLS server in a.test and
// a client in b.test authenticate each other, and a JWT-SVID of b.test
// validates through a.test's Workload API.
func TestFederationTwoTrustDomains(t *testing.T) {
	a := &fedNode{td: "a.test", dir: testutil.SocketDir(t), endpoint: "127.0.0.1:" + testutil.FreePort(t), admin: "127.0.0.1:" + testutil.FreePort(t)}
	b := &fedNode{td: "b.test", dir: testutil.SocketDir(t), endpoint: "127.0.0.1:" + testutil.FreePort(t), admin: "127.0.0.1:" + testutil.FreePort(t)}
	// First start: each trust domain's CA and bundle endpoint exist.
	for _, n := range []*fedNode{a, b} {
		n.writeConfig(t, "")
		n.start(t)
	}
	bootA, bootB := a.bootstrapBundle(t), b.bootstrapBundle(t)
	peer := func(td, url, boot string) string {
		return fmt.Sprintf("  federates_with:\n    %s:\n      url: https://%s\n      profile: https_spiffe\n      endpoint_spiffe_id: spiffe://%s/nodeward/bundle-endpoint\n      bundle: %s\n", td, url, td, boot)
	}
	a.stop(t)
	b.stop(t)
	a.writeConfig(t, peer("b.test", b.endpoint, bootB))
	b.writeConfig(t, peer("a.test", a.endpoint, bootA))
	a.start(t)
	b.start(t)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srcA, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+a.sock)))
	if err != nil {
		t.Fatalf("a.test: %v\n%s", err, a.agent.Log())
	}
	defer srcA.Close()
	srcB, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+b.sock)))
	if err != nil {
		t.Fatal(err)
	}
	defer srcB.Close()
	// Both sides hold the other's bundle (fetched from its endpoint).
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, errA := srcA.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("b.test"))
		_, errB := srcB.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("a.test"))
		if errA == nil && errB == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("federated bundles not served: %v / %v\na.test log:\n%s", errA, errB, a.agent.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	svcA, svcB := spiffeid.RequireFromString("spiffe://a.test/svc"), spiffeid.RequireFromString("spiffe://b.test/svc")
	l, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(srcA, srcA, tlsconfig.AuthorizeID(svcB)))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, _ := x509svid.IDFromCert(r.TLS.PeerCertificates[0])
		fmt.Fprint(w, id.String())
	})}
	go func() { _ = srv.Serve(l) }()
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(srcB, srcB, tlsconfig.AuthorizeID(svcA))}}
	resp, err := client.Get("https://" + l.Addr().String())
	if err != nil {
		t.Fatalf("mTLS across trust domains: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != svcB.String() {
		t.Fatalf("server saw %q", body)
	}

	// A JWT-SVID of b.test validates in a.test.
	cb, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+b.sock))
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	tok, err := cb.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "a.test/svc"})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+a.sock))
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	got, err := ca.ValidateJWTSVID(ctx, tok.Marshal(), "a.test/svc")
	if err != nil || got.ID != svcB {
		t.Fatalf("b.test's JWT-SVID in a.test: %v %v", got, err)
	}
	// a.test started before b.test's endpoint listened: it used the
	// bootstrap bundle, and fetches from the endpoint on its retry.
	deadline = time.Now().Add(30 * time.Second)
	for {
		out, _, code := testutil.Run(t, bin, nil, "status", "--admin", a.admin, "--json")
		if code == 0 && strings.Contains(out, `"federates_with"`) && strings.Contains(out, `"last_refresh"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status does not show the bundle fetched from the endpoint:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestFederationWithSPIRE: a standalone nodeward trust domain (a.test)
// and a real spire-server's (spire.test) federate both ways over
// https_spiffe: nodeward fetches SPIRE's bundle from SPIRE's bundle
// endpoint (authenticating spiffe://spire.test/spire/server) and serves it
// to its federating workloads; SPIRE fetches a.test's bundle from
// nodeward's endpoint (authenticating spiffe://a.test/nodeward/bundle-endpoint).
func TestFederationWithSPIRE(t *testing.T) {
	s := spire.Start(t, spire.Options{TrustDomain: "spire.test", BundleEndpoint: true})
	spireBoot := filepath.Join(t.TempDir(), "spire.test.bundle.json")
	if err := os.WriteFile(spireBoot, []byte(s.CLI("bundle", "show", "-format", "spiffe")), 0o644); err != nil {
		t.Fatal(err)
	}
	a := &fedNode{td: "a.test", dir: testutil.SocketDir(t), endpoint: "127.0.0.1:" + testutil.FreePort(t), admin: "127.0.0.1:" + testutil.FreePort(t)}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	extra := fmt.Sprintf(`admin_listen: %s
federation:
  bundle_endpoint:
    listen: %s
    profile: https_spiffe
  federates_with:
    spire.test:
      url: https://%s
      profile: https_spiffe
      endpoint_spiffe_id: spiffe://spire.test/spire/server
      bundle: %s
entries:
  - spiffe_id: spiffe://a.test/svc
    selectors: [unix:uid:%d, "unix:path:%s"]
    federates_with: [spire.test]
`, a.admin, a.endpoint, s.BundleEndpoint, spireBoot, os.Geteuid(), exe)
	a.cfg, a.sock = testutil.WriteConfig(t, a.dir, "a.test", extra)
	a.start(t)

	// nodeward <- SPIRE: fetched from SPIRE's endpoint, sent to the workload.
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _, _ := testutil.Run(t, bin, nil, "status", "--admin", a.admin, "--json")
		if strings.Contains(out, `"last_refresh"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nodeward never fetched SPIRE's bundle:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	xc, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+a.sock))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := xc.Bundles.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("spire.test")); err != nil {
		t.Fatalf("the workload did not get spire.test's bundle: %v", err)
	}

	// SPIRE <- nodeward: a federation relationship bootstrapped with
	// a.test's bundle, then refreshed from nodeward's endpoint.
	boot := a.bootstrapBundle(t)
	s.CLI("federation", "create", "-trustDomain", "a.test", "-bundleEndpointURL", "https://"+a.endpoint,
		"-bundleEndpointProfile", "https_spiffe", "-endpointSpiffeID", "spiffe://a.test/nodeward/bundle-endpoint",
		"-trustDomainBundlePath", boot, "-trustDomainBundleFormat", "spiffe")
	deadline = time.Now().Add(30 * time.Second)
	for {
		out, err := s.CLIErr("federation", "refresh", "-id", "a.test")
		if err == nil && grepLines(grepLines(s.Log(), "Bundle refreshed"), "a.test") != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("SPIRE never fetched a.test's bundle from nodeward's endpoint: %s %v\nspire-server log:\n%s", out, err, s.Log())
		}
		time.Sleep(500 * time.Millisecond)
	}
}
