package e2e

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/nodeward/nodeward/attestors/tpm"
	"github.com/nodeward/nodeward/test/swtpm"
	"github.com/nodeward/nodeward/test/testutil"
)

// tpmRotAuthority is one member of /v1/status ca.authorities.
type tpmRotAuthority struct {
	Kind        string     `json:"kind"`
	ID          string     `json:"id"`
	State       string     `json:"state"`
	TPMHandle   string     `json:"tpm_handle"`
	ActivatesAt *time.Time `json:"activates_at"`
	DropsAt     *time.Time `json:"drops_at"`
}

// tpmRotAuthorities reads the agent's X.509 authorities from its admin
// listener (nil while it does not answer).
func tpmRotAuthorities(admin string) map[string]tpmRotAuthority {
	c := http.Client{Timeout: 5 * time.Second}
	rsp, err := c.Get("http://" + admin + "/v1/status")
	if err != nil {
		return nil
	}
	defer rsp.Body.Close()
	var st struct {
		CA struct {
			Authorities []tpmRotAuthority `json:"authorities"`
		} `json:"ca"`
	}
	if json.NewDecoder(rsp.Body).Decode(&st) != nil {
		return nil
	}
	out := map[string]tpmRotAuthority{}
	for _, a := range st.CA.Authorities {
		if a.Kind == "x509" {
			out[a.ID] = a
		}
	}
	return out
}

// TestTPMRootRotationNoFailures runs the built agent with `ca: {key: tpm}`
// on a real swtpm over TCP, and a go-spiffe mTLS server and client fed by
// its Workload API, through `nodeward ca rotate --tpm-root`: the new root
// is published (streamed bundle, status, metrics), the agent is restarted
// while it is prepared and again while the old root is retired, the new
// root signs, the old one leaves the bundle when the last intermediate it
// signed expires and its key leaves the TPM; not one handshake fails.
func TestTPMRootRotationNoFailures(t *testing.T) {
	// Mostly waits on key lifetimes: runs beside the other long waits.
	t.Parallel()
	if testing.Short() {
		t.Skip("runs through a TPM root rotation with two restarts (about 90s)")
	}
	sim := swtpm.StartTCP(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := testutil.SocketDir(t)
	data := filepath.Join(dir, "data")
	admin := "127.0.0.1:" + testutil.FreePort(t)
	extra := fmt.Sprintf("admin_listen: %s\ntpm:\n  address: %s\n  ek_roots: %s\n  pcrs: [7]\nca:\n  key: tpm\n  intermediate_ttl: 60s\nentries:\n  - spiffe_id: spiffe://example.org/w\n    selectors: [unix:uid:%d, \"unix:path:%s\"]\n    x509_ttl: 20s\n",
		admin, sim.Addr, sim.RootsPEM, os.Geteuid(), self)
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", extra)
	agent := testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 20*time.Second)
	restart := func(phase string) {
		t.Helper()
		_ = agent.Cmd.Process.Signal(os.Interrupt)
		_ = agent.Cmd.Wait()
		agent = testutil.StartAgent(t, bin, cfg, sock)
		testutil.WaitServing(t, sock, 20*time.Second)
		t.Logf("restarted the agent while the rotation was %s", phase)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	addr := workloadapi.WithClientOptions(workloadapi.WithAddr("unix://" + sock))
	serverSrc, err := workloadapi.NewX509Source(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer serverSrc.Close()
	clientSrc, err := workloadapi.NewX509Source(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer clientSrc.Close()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(serverSrc, serverSrc, tlsconfig.AuthorizeAny()))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	var (
		mu        sync.Mutex
		failures  []string
		roots     = map[string]int{} // root key id (the intermediate's AKI) -> handshakes
		handshake atomic.Int64
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		failures = append(failures, fmt.Sprintf(time.Now().Format("15:04:05.000 ")+format, args...))
	}
	seen := func(id string) int {
		mu.Lock()
		defer mu.Unlock()
		return roots[id]
	}
	clientCfg := tlsconfig.MTLSClientConfig(clientSrc, clientSrc, tlsconfig.AuthorizeAny())
	var wg sync.WaitGroup
	loopCtx, stopLoop := context.WithCancel(ctx)
	defer func() { stopLoop(); wg.Wait() }()
	wg.Go(func() {
		for loopCtx.Err() == nil {
			d := tls.Dialer{Config: clientCfg, NetDialer: &net.Dialer{Timeout: 5 * time.Second}}
			c, err := d.DialContext(loopCtx, "tcp", ln.Addr().String())
			if err != nil {
				if loopCtx.Err() == nil {
					fail("handshake: %v", err)
				}
				continue
			}
			_, werr := c.Write([]byte("x"))
			buf := make([]byte, 1)
			_, rerr := io.ReadFull(c, buf)
			if werr != nil || rerr != nil {
				fail("echo: %v %v", werr, rerr)
			}
			st := c.(*tls.Conn).ConnectionState()
			mu.Lock()
			roots[hex.EncodeToString(st.PeerCertificates[len(st.PeerCertificates)-1].AuthorityKeyId)]++
			mu.Unlock()
			_ = c.Close()
			handshake.Add(1)
			select {
			case <-loopCtx.Done():
			case <-time.After(100 * time.Millisecond): // pacing, not synchronisation
			}
		}
	})
	td := spiffeid.RequireTrustDomainFromString("example.org")
	bundleRoots := func() int {
		b, err := clientSrc.GetX509BundleForTrustDomain(td)
		if err != nil {
			return 0
		}
		return len(b.X509Authorities())
	}
	// waitUntil polls cond with a deadline (a condition, not a sleep).
	waitUntil := func(what string, within time.Duration, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(within)
		for !cond() {
			if time.Now().After(deadline) {
				mu.Lock()
				f := append([]string(nil), failures...)
				mu.Unlock()
				t.Fatalf("%s: not within %v; failures so far: %v\n%s", what, within, f, agent.Log())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	var oldID string
	waitUntil("the first handshakes", 20*time.Second, func() bool {
		for id, a := range tpmRotAuthorities(admin) {
			if a.State == "active" {
				oldID = id
			}
		}
		return oldID != "" && seen(oldID) > 0
	})

	// Prepare: the new root is published, streamed, in status and metrics.
	out, stderr, code := testutil.Run(t, bin, nil, "ca", "rotate", "--tpm-root", "--activate-after", "30s", "--data-dir", data)
	if code != 0 || !strings.Contains(out, "prepared: new TPM root") || !strings.Contains(out, "0x81000101") {
		t.Fatalf("ca rotate --tpm-root: %d %s %s", code, out, stderr)
	}
	var newID string
	for id, a := range tpmRotAuthorities(admin) {
		if a.State == "prepared" && a.TPMHandle == "0x81000101" && a.ActivatesAt != nil {
			newID = id
		}
	}
	if newID == "" {
		t.Fatalf("status after prepare: %+v", tpmRotAuthorities(admin))
	}
	if out, _, code := testutil.Run(t, bin, nil, "status", "--admin", admin); code != 0 || !strings.Contains(out, "prepared") ||
		!strings.Contains(out, "tpm handle 0x81000101, activates ") {
		t.Fatalf("status text after prepare:\n%s", out)
	}
	waitUntil("the streamed bundle with both roots", 10*time.Second, func() bool { return bundleRoots() == 2 })
	if m := tpmRotMetrics(t, admin); !strings.Contains(m, `nodeward_ca_authorities{kind="x509",state="prepared"} 1`) {
		t.Fatalf("metrics after prepare lack one prepared x509 tpmRotAuthority:\n%s", tpmRotLines(m, "nodeward_ca_authorities"))
	}

	restart("prepared")
	// The admin listener may answer a moment after the socket.
	waitUntil("the status after a restart in the prepared phase", 10*time.Second, func() bool { return tpmRotAuthorities(admin) != nil })
	if a, ok := tpmRotAuthorities(admin)[newID]; !ok || a.State != "prepared" {
		t.Fatalf("after a restart in the prepared phase: %+v", tpmRotAuthorities(admin))
	}

	// Activation at its time: the new root signs.
	waitUntil("the new root active and the old one retired", 60*time.Second, func() bool {
		as := tpmRotAuthorities(admin)
		return as[newID].State == "active" && as[oldID].State == "retired"
	})
	waitUntil("handshakes with SVIDs chained to the new root", 60*time.Second, func() bool { return seen(newID) > 0 })

	restart("retired")
	waitUntil("the status after a restart in the retired phase", 10*time.Second, func() bool { return tpmRotAuthorities(admin) != nil })
	as := tpmRotAuthorities(admin)
	if as[oldID].State != "retired" || as[oldID].DropsAt == nil || as[newID].State != "active" {
		t.Fatalf("after a restart in the retired phase: %+v", as)
	}
	dropsAt := *as[oldID].DropsAt
	if bundleRoots() != 2 {
		t.Fatalf("the retired root left the streamed bundle before %v", dropsAt)
	}
	// Dropped when the last intermediate it signed expires (at most 60s).
	waitUntil("the old root dropped from status and the streamed bundle", time.Until(dropsAt)+30*time.Second, func() bool {
		_, ok := tpmRotAuthorities(admin)[oldID]
		return !ok && bundleRoots() == 1
	})
	if time.Now().Before(dropsAt) {
		t.Fatalf("the old root was dropped before %v", dropsAt)
	}
	// A few more handshakes on the new root only.
	n := seen(newID)
	waitUntil("handshakes after the drop", 20*time.Second, func() bool { return seen(newID) >= n+5 })
	stopLoop()
	wg.Wait()
	mu.Lock()
	if len(failures) > 0 {
		t.Fatalf("%d failures over %d handshakes through the TPM root rotation, first: %v", len(failures), handshake.Load(), failures[:min(5, len(failures))])
	}
	t.Logf("%d handshakes (%d on the old root, %d on the new), zero failures", handshake.Load(), roots[oldID], roots[newID])
	mu.Unlock()

	auditLog, err := os.ReadFile(filepath.Join(dir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range []string{"ca_prepare", "ca_activate", "ca_retire", "ca_drop"} {
		if !strings.Contains(string(auditLog), `"event":"`+ev+`"`) {
			t.Errorf("audit log lacks %s", ev)
		}
	}
	// The old key left the TPM; the new one is there (read with the agent
	// stopped: the simulator serves one connection at a time).
	_ = agent.Cmd.Process.Signal(os.Interrupt)
	_ = agent.Cmd.Wait()
	tp, err := tpm.Open(ctx, sim.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	if _, err := tp.LoadSigningKey(ctx, 0x81000100); !errors.Is(err, tpm.ErrNoKey) {
		t.Errorf("the old root's TPM key at 0x81000100: %v, want evicted", err)
	}
	if _, err := tp.LoadSigningKey(ctx, 0x81000101); err != nil {
		t.Errorf("the new root's TPM key at 0x81000101: %v", err)
	}
}

func tpmRotMetrics(t *testing.T, admin string) string {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	rsp, err := c.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer rsp.Body.Close()
	b, err := io.ReadAll(rsp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func tpmRotLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
