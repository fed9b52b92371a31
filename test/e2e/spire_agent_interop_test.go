package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nodeward/nodeward/test/spire"
	"github.com/nodeward/nodeward/test/testutil"
)

// startInteropNode starts the real nodeward binary in fleet mode, attested
// to s with a join token made without -spiffeID, so that its agent ID,
// spiffe://<td>/spire/agent/join_token/<token> (returned), is what entries
// for its workloads name as parent, as they do for a spire-agent.
func startInteropNode(t *testing.T, s *spire.Server) (n *fleetNode, agentID string) {
	t.Helper()
	dir := testutil.SocketDir(t)
	bundle := filepath.Join(dir, "spire-bundle.pem")
	if err := os.WriteFile(bundle, s.BundlePEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	tok := s.TokenGenerate("")
	n = &fleetNode{admin: "127.0.0.1:" + testutil.FreePort(t), nodeID: s.ID("/spire/agent/join_token/" + tok)}
	extra := fmt.Sprintf("admin_listen: %s\nserver:\n  address: %s\n  trust_bundle: %s\n  sync_interval: 1s\n  node_attestation:\n    join_token: %s\n",
		n.admin, s.Addr, bundle, tok)
	n.cfg, n.sock = testutil.WriteConfig(t, dir, s.TrustDomain, extra)
	n.agent = testutil.StartAgent(t, bin, n.cfg, n.sock)
	testutil.WaitServing(t, n.sock, 30*time.Second)
	return n, n.nodeID
}

// waitX509SVID polls a Workload API socket (either agent's) until it serves
// id to this process, and returns that SVID.
func waitX509SVID(t *testing.T, sock, id string, within time.Duration, agentLog func() string) *x509svid.SVID {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		xc, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+sock))
		cancel()
		if err == nil {
			for _, sv := range xc.SVIDs {
				if sv.ID.String() == id {
					return sv
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not serve %s within %s: %v\nagent log:\n%s", sock, id, within, err, agentLog())
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
}

// mtlsOnce runs one HTTPS request over go-spiffe mTLS: the server takes
// its SVID and bundle from srvSrc and authorizes only clientID, the client
// takes its SVID and bundle from cliSrc and authorizes only serverID. It
// returns the client SPIFFE ID the server saw, or the client's error.
func mtlsOnce(t *testing.T, srvSrc, cliSrc *workloadapi.X509Source, serverID, clientID string) (string, error) {
	t.Helper()
	sawServer := make(chan string, 1)
	l, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(srvSrc, srvSrc, tlsconfig.AuthorizeID(spiffeid.RequireFromString(clientID))))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			peer, err := x509svid.IDFromCert(r.TLS.PeerCertificates[0])
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			fmt.Fprint(w, peer.String())
		}),
		ErrorLog: log.New(io.Discard, "", 0), // the refused handshakes below are expected
	}
	go func() { _ = srv.Serve(l) }()
	defer srv.Close()
	cliCfg := tlsconfig.MTLSClientConfig(cliSrc, cliSrc, tlsconfig.AuthorizeID(spiffeid.RequireFromString(serverID)))
	cliCfg.VerifyConnection = func(cs tls.ConnectionState) error {
		id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
		if err != nil {
			return err
		}
		select {
		case sawServer <- id.String():
		default:
		}
		return nil
	}
	tr := &http.Transport{TLSClientConfig: cliCfg, DisableKeepAlives: true,
		DialContext: (&net.Dialer{Timeout: 10 * time.Second}).DialContext}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	resp, err := client.Get("https://" + l.Addr().String())
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("server answered %s: %s", resp.Status, body)
	}
	select {
	case got := <-sawServer:
		if got != serverID {
			return "", fmt.Errorf("client saw server %s, want %s", got, serverID)
		}
	default:
		return "", errors.New("the client's VerifyConnection never ran")
	}
	return string(body), nil
}

// TestSpireAgentInterop: one real spire-server; node A is the real nodeward
// binary in fleet mode, node B a real spire-agent (v1.15.3), both attested
// with join tokens. Workload entries (unix:uid) are parented to each node's
// agent ID. A go-spiffe mTLS server on A's Workload API and a client on B's
// authenticate each other, each authorizing the other's exact SPIFFE ID;
// then the roles swap (server on B, client on A). A JWT-SVID minted through
// B validates against the JWT bundles fetched from A (and through A's
// ValidateJWTSVID), and one minted through A against B's. Both 30 s
// X.509-SVIDs rotate and the handshakes pass again both ways; the entries
// deleted on the server are gone from both nodes.
func TestSpireAgentInterop(t *testing.T) {
	start := time.Now()
	s := spire.Start(t, spire.Options{TrustDomain: "interop.test", CacheReloadInterval: time.Second})
	a, agentA := startInteropNode(t, s)
	b := spire.StartAgent(t, s, spire.AgentOptions{SyncInterval: time.Second})
	if agentA == b.ID {
		t.Fatalf("both nodes have agent ID %s", agentA)
	}
	uidSel := fmt.Sprintf("unix:uid:%d", os.Geteuid())
	svcA, svcB := s.ID("/interop/on-nodeward"), s.ID("/interop/on-spire-agent")
	// 30 s X.509-SVIDs, so that both rotate during the test.
	const ttl = 30
	idA := s.EntryCreate(spire.Entry{ParentID: agentA, SPIFFEID: svcA, Selectors: []string{uidSel}, X509SVIDTTL: ttl})
	idB := s.EntryCreate(spire.Entry{ParentID: b.ID, SPIFFEID: svcB, Selectors: []string{uidSel}, X509SVIDTTL: ttl})

	// Node A's own identity is the join-token agent ID the entry names.
	out, errOut, code := testutil.Run(t, bin, nil, "status", "--admin", a.admin)
	if code != 0 || !strings.Contains(out, agentA) {
		t.Fatalf("nodeward status does not show agent ID %s: %d\n%s%s", agentA, code, out, errOut)
	}

	svA := waitX509SVID(t, a.sock, svcA, 30*time.Second, a.agent.Log)
	svB := waitX509SVID(t, b.SocketPath, svcB, 30*time.Second, b.Log)
	t.Logf("start -> both SVIDs served: %v", time.Since(start).Round(10*time.Millisecond))
	// Each node serves only its own entry: the server authorizes entries
	// per agent, and neither agent leaks the other's.
	for _, c := range []struct{ sock, other string }{{a.sock, svcB}, {b.SocketPath, svcA}} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		xc, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+c.sock))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		for _, sv := range xc.SVIDs {
			if sv.ID.String() == c.other {
				t.Fatalf("%s serves %s, an entry of the other node", c.sock, c.other)
			}
		}
	}
	// Both are signed by the same SPIRE CA: B's SVID verifies against the
	// bundle A serves and A's against B's.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bundlesA, err := workloadapi.FetchX509Bundles(ctx, workloadapi.WithAddr("unix://"+a.sock))
	if err != nil {
		t.Fatal(err)
	}
	bundlesB, err := workloadapi.FetchX509Bundles(ctx, workloadapi.WithAddr("unix://"+b.SocketPath))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svB.Certificates, bundlesA); err != nil {
		t.Fatalf("spire-agent's SVID does not verify against nodeward's bundle: %v", err)
	}
	if _, _, err := x509svid.Verify(svA.Certificates, bundlesB); err != nil {
		t.Fatalf("nodeward's SVID does not verify against spire-agent's bundle: %v", err)
	}

	// Both agents serve the trust domain's bundle as the server has it:
	// the same X.509 authorities and the same JWT keys.
	tdBundleA, err := bundlesA.GetX509BundleForTrustDomain(svA.ID.TrustDomain())
	if err != nil {
		t.Fatal(err)
	}
	tdBundleB, err := bundlesB.GetX509BundleForTrustDomain(svA.ID.TrustDomain())
	if err != nil {
		t.Fatal(err)
	}
	if !tdBundleA.Equal(tdBundleB) {
		t.Fatalf("X.509 bundles differ: nodeward serves %d authorities, spire-agent %d", len(tdBundleA.X509Authorities()), len(tdBundleB.X509Authorities()))
	}
	srcA, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+a.sock)))
	if err != nil {
		t.Fatal(err)
	}
	defer srcA.Close()
	srcB, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+b.SocketPath)))
	if err != nil {
		t.Fatal(err)
	}
	defer srcB.Close()
	if got, _ := srcA.GetX509SVID(); got == nil || got.ID.String() != svcA {
		t.Fatalf("source on nodeward holds %v, want %s", got, svcA)
	}
	if got, _ := srcB.GetX509SVID(); got == nil || got.ID.String() != svcB {
		t.Fatalf("source on spire-agent holds %v, want %s", got, svcB)
	}

	// Server behind nodeward, client behind spire-agent.
	if saw, err := mtlsOnce(t, srcA, srcB, svcA, svcB); err != nil || saw != svcB {
		t.Fatalf("mTLS server on nodeward <- client on spire-agent: saw %q, %v", saw, err)
	}
	// Swapped: server behind spire-agent, client behind nodeward.
	if saw, err := mtlsOnce(t, srcB, srcA, svcB, svcA); err != nil || saw != svcA {
		t.Fatalf("mTLS server on spire-agent <- client on nodeward: saw %q, %v", saw, err)
	}
	// The authorization is real: a server that admits only svcB refuses
	// nodeward's svcA, and a client that wants svcA refuses spire-agent's
	// server.
	if saw, err := mtlsOnce(t, srcA, srcA, svcA, svcB); err == nil {
		t.Fatalf("a server admitting only %s accepted a client as %q", svcB, saw)
	}
	if saw, err := mtlsOnce(t, srcB, srcB, svcA, svcB); err == nil {
		t.Fatalf("a client wanting server %s accepted %s's server (server saw %q)", svcA, svcB, saw)
	}

	// JWT-SVIDs across the two agents.
	const aud = "interop-audience"
	jwtVia := func(sock string) *jwtsvid.SVID {
		t.Helper()
		sv, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud}, workloadapi.WithAddr("unix://"+sock))
		if err != nil {
			t.Fatalf("FetchJWTSVID via %s: %v", sock, err)
		}
		return sv
	}
	jwtB, jwtA := jwtVia(b.SocketPath), jwtVia(a.sock)
	if jwtB.ID.String() != svcB || jwtA.ID.String() != svcA {
		t.Fatalf("JWT-SVIDs for %s and %s, want %s and %s", jwtB.ID, jwtA.ID, svcB, svcA)
	}
	jwtBundlesA, err := workloadapi.FetchJWTBundles(ctx, workloadapi.WithAddr("unix://"+a.sock))
	if err != nil {
		t.Fatal(err)
	}
	jwtBundlesB, err := workloadapi.FetchJWTBundles(ctx, workloadapi.WithAddr("unix://"+b.SocketPath))
	if err != nil {
		t.Fatal(err)
	}
	jbA, err := jwtBundlesA.GetJWTBundleForTrustDomain(jwtA.ID.TrustDomain())
	if err != nil {
		t.Fatal(err)
	}
	jbB, err := jwtBundlesB.GetJWTBundleForTrustDomain(jwtA.ID.TrustDomain())
	if err != nil {
		t.Fatal(err)
	}
	if !jbA.Equal(jbB) || len(jbA.JWTAuthorities()) == 0 {
		t.Fatalf("JWT bundles differ or are empty: nodeward has %d keys, spire-agent %d", len(jbA.JWTAuthorities()), len(jbB.JWTAuthorities()))
	}
	if v, err := jwtsvid.ParseAndValidate(jwtB.Marshal(), jwtBundlesA, []string{aud}); err != nil || v.ID.String() != svcB {
		t.Fatalf("spire-agent's JWT-SVID against nodeward's JWT bundles: %v, %v", v, err)
	}
	if v, err := jwtsvid.ParseAndValidate(jwtA.Marshal(), jwtBundlesB, []string{aud}); err != nil || v.ID.String() != svcA {
		t.Fatalf("nodeward's JWT-SVID against spire-agent's JWT bundles: %v, %v", v, err)
	}
	if _, err := jwtsvid.ParseAndValidate(jwtB.Marshal(), jwtBundlesA, []string{"another-audience"}); err == nil {
		t.Fatal("a JWT-SVID validated for an audience it was not minted for")
	}
	// And through each agent's ValidateJWTSVID RPC.
	if v, err := workloadapi.ValidateJWTSVID(ctx, jwtB.Marshal(), aud, workloadapi.WithAddr("unix://"+a.sock)); err != nil || v.ID.String() != svcB {
		t.Fatalf("nodeward's ValidateJWTSVID of spire-agent's JWT-SVID: %v, %v", v, err)
	}
	if v, err := workloadapi.ValidateJWTSVID(ctx, jwtA.Marshal(), aud, workloadapi.WithAddr("unix://"+b.SocketPath)); err != nil || v.ID.String() != svcA {
		t.Fatalf("spire-agent's ValidateJWTSVID of nodeward's JWT-SVID: %v, %v", v, err)
	}

	// Both SVIDs rotate (each agent on its own schedule) and reach the
	// sources over their open streams; the handshakes still pass both ways.
	rotStart := time.Now()
	deadline := rotStart.Add(2 * ttl * time.Second)
	for {
		nowA, errA := srcA.GetX509SVID()
		nowB, errB := srcB.GetX509SVID()
		if errA == nil && errB == nil && nowA.Certificates[0].SerialNumber.Cmp(svA.Certificates[0].SerialNumber) != 0 &&
			nowB.Certificates[0].SerialNumber.Cmp(svB.Certificates[0].SerialNumber) != 0 {
			if nowA.ID.String() != svcA || nowB.ID.String() != svcB {
				t.Fatalf("rotated SVIDs are %s and %s, want %s and %s", nowA.ID, nowB.ID, svcA, svcB)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("SVIDs did not both rotate within %s (nodeward rotated: %v, spire-agent rotated: %v)", 2*ttl*time.Second,
				errA == nil && nowA.Certificates[0].SerialNumber.Cmp(svA.Certificates[0].SerialNumber) != 0,
				errB == nil && nowB.Certificates[0].SerialNumber.Cmp(svB.Certificates[0].SerialNumber) != 0)
		}
		time.Sleep(200 * time.Millisecond) // polling interval
	}
	t.Logf("both %ds SVIDs rotated, seen %v after polling began", ttl, time.Since(rotStart).Round(10*time.Millisecond))
	if saw, err := mtlsOnce(t, srcA, srcB, svcA, svcB); err != nil || saw != svcB {
		t.Fatalf("after rotation, server on nodeward <- client on spire-agent: saw %q, %v", saw, err)
	}
	if saw, err := mtlsOnce(t, srcB, srcA, svcB, svcA); err != nil || saw != svcA {
		t.Fatalf("after rotation, server on spire-agent <- client on nodeward: saw %q, %v", saw, err)
	}

	// Revocation from one place reaches both kinds of node: the entries
	// deleted on the server, neither node serves them any more.
	delStart := time.Now()
	s.EntryDelete(idA)
	s.EntryDelete(idB)
	gone := map[string]time.Duration{}
	deadline = delStart.Add(60 * time.Second)
	for len(gone) < 2 {
		for name, c := range map[string]struct{ sock, id string }{"nodeward": {a.sock, svcA}, "spire-agent": {b.SocketPath, svcB}} {
			if _, done := gone[name]; done {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			xc, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+c.sock))
			cancel()
			// Gone: served without it, or no identity at all (PermissionDenied);
			// any other error (Unavailable) proves nothing.
			still := err != nil && status.Code(err) != codes.PermissionDenied
			if err == nil {
				for _, sv := range xc.SVIDs {
					still = still || sv.ID.String() == c.id
				}
			}
			if !still {
				gone[name] = time.Since(delStart)
			}
		}
		if len(gone) < 2 && time.Now().After(deadline) {
			t.Fatalf("deleted entries still served 60s later (gone so far: %v)", gone)
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
	t.Logf("entries deleted -> gone: nodeward %v, spire-agent %v", gone["nodeward"].Round(10*time.Millisecond), gone["spire-agent"].Round(10*time.Millisecond))
	t.Logf("interop test body done in %v", time.Since(start).Round(10*time.Millisecond))
}
