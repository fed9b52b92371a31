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
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/nodeward/nodeward/test/spire"
	"github.com/nodeward/nodeward/test/testutil"
)

// fleetNode is one nodeward agent process joined to a spire-server.
type fleetNode struct {
	agent  *testutil.Agent
	sock   string
	admin  string
	cfg    string
	nodeID string
}

// startFleetNode writes a fleet-mode config (join token for nodeID, 1 s
// sync) and starts the real binary with it.
func startFleetNode(t *testing.T, s *spire.Server, name string) *fleetNode {
	t.Helper()
	dir := testutil.SocketDir(t)
	bundle := filepath.Join(dir, "spire-bundle.pem")
	if err := os.WriteFile(bundle, s.BundlePEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	n := &fleetNode{nodeID: s.ID("/node/" + name), admin: "127.0.0.1:" + testutil.FreePort(t)}
	tok := s.TokenGenerate(n.nodeID)
	extra := fmt.Sprintf("admin_listen: %s\nserver:\n  address: %s\n  trust_bundle: %s\n  sync_interval: 1s\n  node_attestation:\n    join_token: %s\n",
		n.admin, s.Addr, bundle, tok)
	n.cfg, n.sock = testutil.WriteConfig(t, dir, s.TrustDomain, extra)
	n.agent = testutil.StartAgent(t, bin, n.cfg, n.sock)
	testutil.WaitServing(t, n.sock, 30*time.Second)
	return n
}

// svidFrom waits until the node's Workload API serves id to this process.
func svidFrom(t *testing.T, n *fleetNode, id string, within time.Duration) *x509svid.SVID {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		xc, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+n.sock))
		cancel()
		if err == nil {
			for _, sv := range xc.SVIDs {
				if sv.ID.String() == id {
					return sv
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s did not serve %s within %s: %v\nagent log:\n%s", n.nodeID, id, within, err, n.agent.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestFleetTwoNodesAuthenticateEachOther: two nodeward agents (two
// processes, two data dirs, two sockets: two nodes) join one real
// spire-server with join tokens. A go-spiffe mTLS server using node A's
// Workload API and a client using node B's authenticate each other with
// SPIRE-signed SVIDs. Deleting the client's entry on the server takes the
// identity away on node B within a sync; a node killed -9 comes back from
// its persisted agent SVID (its token is spent); a stopped server leaves
// cached SVIDs served and says so in status and metrics.
func TestFleetTwoNodesAuthenticateEachOther(t *testing.T) {
	s := spire.Start(t, spire.Options{TrustDomain: "fleet.test", CacheReloadInterval: time.Second})
	a := startFleetNode(t, s, "a")
	b := startFleetNode(t, s, "b")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sels := []string{fmt.Sprintf("unix:uid:%d", os.Geteuid()), "unix:path:" + exe}
	svcA, svcB := s.ID("/svc/a"), s.ID("/svc/b")
	s.EntryCreate(spire.Entry{ParentID: a.nodeID, SPIFFEID: svcA, Selectors: sels})
	idB := s.EntryCreate(spire.Entry{ParentID: b.nodeID, SPIFFEID: svcB, Selectors: sels})

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	svidFrom(t, a, svcA, 30*time.Second)
	svidFrom(t, b, svcB, 30*time.Second)
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
	l, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(srcA, srcA, tlsconfig.AuthorizeID(spiffeid.RequireFromString(svcB))))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peer, _ := x509svid.IDFromCert(r.TLS.PeerCertificates[0])
		fmt.Fprint(w, peer.String())
	})}
	go func() { _ = srv.Serve(l) }()
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(srcB, srcB, tlsconfig.AuthorizeID(spiffeid.RequireFromString(svcA)))}}
	resp, err := client.Get("https://" + l.Addr().String())
	if err != nil {
		t.Fatalf("mTLS from node B's workload to node A's: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != svcB {
		t.Fatalf("the server saw %q, want %s", body, svcB)
	}

	// Status and metrics say fleet mode.
	out, errOut, code := testutil.Run(t, bin, nil, "status", "--admin", a.admin)
	if code != 0 || !strings.Contains(out, "mode:         server") || !strings.Contains(out, "server:       "+s.Addr) ||
		!strings.Contains(out, s.ID("/spire/agent/join_token/")) {
		t.Fatalf("status: %d\n%s%s", code, out, errOut)
	}

	// Revocation from one place: the entry deleted on the server.
	start := time.Now()
	s.EntryDelete(idB)
	deadline := start.Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		xc, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+b.sock))
		cancel()
		if err != nil || len(xc.SVIDs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("node B kept serving a deleted entry")
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("entry deleted on the server -> identity gone on node B in %v", time.Since(start).Round(10*time.Millisecond))

	// kill -9 and restart: the spent join token is not needed again.
	if err := a.agent.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = a.agent.Cmd.Wait()
	a.agent = testutil.StartAgent(t, bin, a.cfg, a.sock)
	testutil.WaitServing(t, a.sock, 30*time.Second)
	svidFrom(t, a, svcA, 30*time.Second)

	// The server goes away: cached SVIDs keep being served; status and
	// metrics say it is unreachable.
	s.Stop()
	deadline = time.Now().Add(30 * time.Second)
	for {
		out, _, _ = testutil.Run(t, bin, nil, "status", "--admin", a.admin)
		if strings.Contains(out, "UNREACHABLE") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never said unreachable:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	svidFrom(t, a, svcA, 5*time.Second)
	m := fetchText(t, "http://"+a.admin+"/metrics")
	if !strings.Contains(m, "nodeward_server_reachable 0") || !strings.Contains(m, `nodeward_server_syncs_total{result="error"}`) {
		t.Fatalf("metrics do not say the server is unreachable:\n%s", grepLines(m, "nodeward_server"))
	}

	// The server comes back: recovery is automatic (the sync backoff is
	// capped; 1 s interval here), and new entries reach the node again.
	s.Restart()
	deadline = time.Now().Add(60 * time.Second)
	for {
		m = fetchText(t, "http://"+a.admin+"/metrics")
		if strings.Contains(m, "nodeward_server_reachable 1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the node did not recover after the server came back:\n%s\nagent log:\n%s", grepLines(m, "nodeward_server"), a.agent.Log())
		}
		time.Sleep(200 * time.Millisecond)
	}
	svcC := s.ID("/svc/c")
	s.EntryCreate(spire.Entry{ParentID: a.nodeID, SPIFFEID: svcC, Selectors: []string{sels[0], sels[1], "unix:gid:" + fmt.Sprint(os.Getegid())}})
	svidFrom(t, a, svcC, 30*time.Second)
}

func fetchText(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
