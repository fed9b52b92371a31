package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/nodeward/nodeward/test/testutil"
)

// TestFederationRootRotationReachesPeer: b.test rotates its root and JWT
// key on the normal lifecycle (ca.ttl 60s: the next key is published at
// 30s and signs from 50s); a.test, federated with it, fetches b.test's
// bundle at its refresh hint (at least every 10s) and so holds the new
// root and JWT key before they sign anything. A go-spiffe mTLS client in
// b.test keeps calling a server in a.test, and a.test keeps validating
// b.test's JWT-SVIDs, across the rotation: not one failure.
func TestFederationRootRotationReachesPeer(t *testing.T) {
	// Mostly waits on key lifetimes: runs beside the other long waits.
	t.Parallel()
	a := &fedNode{td: "a.test", dir: testutil.SocketDir(t), endpoint: "127.0.0.1:" + testutil.FreePort(t), admin: "127.0.0.1:" + testutil.FreePort(t)}
	b := &fedNode{td: "b.test", dir: testutil.SocketDir(t), endpoint: "127.0.0.1:" + testutil.FreePort(t), admin: "127.0.0.1:" + testutil.FreePort(t)}
	config := func(n *fedNode, federation string) {
		body := fmt.Sprintf("admin_listen: %s\nfederation:\n  bundle_endpoint:\n    listen: %s\n    profile: https_spiffe\n    refresh_hint: 10s\n%s",
			n.admin, n.endpoint, federation)
		if n.td == "b.test" {
			body += "ca:\n  ttl: 60s\n  jwt_key_ttl: 60s\n"
		}
		body += fmt.Sprintf("entries:\n  - spiffe_id: spiffe://%s/svc\n    selectors: [unix:uid:%d, \"unix:path:%s\"]\n    x509_ttl: 10s\n    jwt_ttl: 10s\n",
			n.td, os.Geteuid(), exe(t))
		if federation != "" {
			body += "    federates_with: [" + map[string]string{"a.test": "b.test", "b.test": "a.test"}[n.td] + "]\n"
		}
		n.cfg, n.sock = testutil.WriteConfig(t, n.dir, n.td, body)
	}
	for _, n := range []*fedNode{a, b} {
		config(n, "")
		n.start(t)
	}
	bootA, bootB := a.bootstrapBundle(t), b.bootstrapBundle(t)
	peer := func(td, url, boot string) string {
		return fmt.Sprintf("  federates_with:\n    %s:\n      url: https://%s\n      profile: https_spiffe\n      endpoint_spiffe_id: spiffe://%s/nodeward/bundle-endpoint\n      bundle: %s\n", td, url, td, boot)
	}
	a.stop(t)
	b.stop(t)
	config(a, peer("b.test", b.endpoint, bootB))
	config(b, peer("a.test", a.endpoint, bootA))
	a.start(t)
	b.start(t)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srcA, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+a.sock)))
	if err != nil {
		t.Fatal(err)
	}
	defer srcA.Close()
	srcB, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+b.sock)))
	if err != nil {
		t.Fatal(err)
	}
	defer srcB.Close()
	tdA, tdB := spiffeid.RequireTrustDomainFromString("a.test"), spiffeid.RequireTrustDomainFromString("b.test")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		_, errA := srcA.GetX509BundleForTrustDomain(tdB)
		_, errB := srcB.GetX509BundleForTrustDomain(tdA)
		if errA == nil && errB == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("federated bundles not served: %v / %v", errA, errB)
		}
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
	clientB, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+b.sock))
	if err != nil {
		t.Fatal(err)
	}
	defer clientB.Close()
	clientA, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+a.sock))
	if err != nil {
		t.Fatal(err)
	}
	defer clientA.Close()

	issuer := func() []byte {
		sv, err := srcB.GetX509SVID()
		if err != nil {
			t.Fatal(err)
		}
		return sv.Certificates[0].AuthorityKeyId
	}
	firstRoot := issuer()
	rounds, rotatedAt := 0, time.Time{}
	for deadline := time.Now().Add(100 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		// A new connection every round: every handshake checks the
		// current SVIDs against the current federated bundle.
		tr := &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(srcB, srcB, tlsconfig.AuthorizeID(svcA)), DisableKeepAlives: true}
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + l.Addr().String())
		if err != nil {
			t.Fatalf("round %d: mTLS from b.test to a.test failed: %v\nb.test log:\n%s", rounds, err, b.agent.Log())
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != svcB.String() {
			t.Fatalf("round %d: the server saw %q", rounds, body)
		}
		tok, err := clientB.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "a.test/svc"})
		if err != nil {
			t.Fatalf("round %d: JWT-SVID from b.test: %v", rounds, err)
		}
		if got, err := clientA.ValidateJWTSVID(ctx, tok.Marshal(), "a.test/svc"); err != nil || got.ID != svcB {
			t.Fatalf("round %d: b.test's JWT-SVID did not validate in a.test: %v", rounds, err)
		}
		rounds++
		if rotatedAt.IsZero() && !bytes.Equal(issuer(), firstRoot) {
			rotatedAt = time.Now()
			t.Logf("b.test's SVIDs come from its new root after %d rounds", rounds)
		}
		// Go on a while past the switch: the JWT key switches too.
		if !rotatedAt.IsZero() && time.Since(rotatedAt) > 12*time.Second {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("b.test did not rotate its root within the deadline (%d rounds)", rounds)
		}
	}
	t.Logf("%d rounds of mTLS + JWT validation across b.test's root and JWT key rotation, no failure", rounds)
}
