package e2e

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/nodeward/nodeward/test/testutil"
)

// TestCARotationNoFailures runs the real agent with short key lifetimes
// (ca.ttl 48s, jwt_key_ttl 48s, SVIDs 8s) and a go-spiffe mTLS server and
// client plus a JWT-SVID validator, all fed by the Workload API, through
// at least two full root and JWT key rotations: not one handshake or
// validation may fail, though the agent is restarted in the middle of
// the prepared phase and of the retired phase. Then `nodeward ca rotate`
// and `ca taint` drop the old root, and the open streams get SVIDs of the
// new one.
func TestCARotationNoFailures(t *testing.T) {
	// Mostly waits on key lifetimes: runs beside the other long waits.
	t.Parallel()
	if testing.Short() {
		t.Skip("runs through two key rotations (about 90s)")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := testutil.SocketDir(t)
	extra := fmt.Sprintf("ca:\n  ttl: 48s\n  jwt_key_ttl: 48s\nentries:\n  - spiffe_id: spiffe://example.org/w\n    selectors: [unix:uid:%d, \"unix:path:%s\"]\n    x509_ttl: 8s\n    jwt_ttl: 8s\n",
		os.Geteuid(), self)
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", extra)
	agent := testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 10*time.Second)

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
	jwtSrc, err := workloadapi.NewJWTSource(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer jwtSrc.Close()

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
		roots     = map[string]bool{} // authority key ids of the server leaves seen
		kids      = map[string]bool{}
		handshake atomic.Int64
		validated atomic.Int64
		// down is set while the test restarts the agent: a JWT-SVID
		// fetch (a Workload API call) may fail then; handshakes and
		// validations (served from the sources' caches) must not.
		down atomic.Bool
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		failures = append(failures, fmt.Sprintf(time.Now().Format("15:04:05.000 ")+format, args...))
	}
	clientCfg := tlsconfig.MTLSClientConfig(clientSrc, clientSrc, tlsconfig.AuthorizeAny())
	td := spiffeid.RequireTrustDomainFromString("example.org")
	var wg sync.WaitGroup
	loopCtx, stopLoops := context.WithCancel(ctx)
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
			roots[hex.EncodeToString(st.PeerCertificates[len(st.PeerCertificates)-1].AuthorityKeyId)] = true
			mu.Unlock()
			_ = c.Close()
			handshake.Add(1)
			select {
			case <-loopCtx.Done():
			case <-time.After(100 * time.Millisecond): // pacing, not synchronisation
			}
		}
	})
	wg.Go(func() {
		for loopCtx.Err() == nil {
			sv, err := jwtSrc.FetchJWTSVID(loopCtx, jwtsvid.Params{Audience: "aud"})
			if err != nil {
				if loopCtx.Err() == nil && !down.Load() {
					fail("fetch JWT-SVID: %v", err)
				}
				continue
			}
			if _, err := jwtsvid.ParseAndValidate(sv.Marshal(), jwtSrc, []string{"aud"}); err != nil {
				fail("validate JWT-SVID: %v", err)
			} else {
				var hdr struct {
					Kid string `json:"kid"`
				}
				if seg := strings.SplitN(sv.Marshal(), ".", 2)[0]; seg != "" {
					if raw, err := base64.RawURLEncoding.DecodeString(seg); err == nil {
						_ = json.Unmarshal(raw, &hdr)
					}
				}
				mu.Lock()
				kids[hdr.Kid] = true
				mu.Unlock()
				validated.Add(1)
			}
			select {
			case <-loopCtx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
	// Two full rotations: three distinct roots and JWT keys in use. The
	// agent is restarted once while a next key is prepared and once while
	// an old one is retired: the journal carries the cycle on.
	auditPath := filepath.Join(dir, "audit.log")
	restartAfter := []string{`"event":"ca_prepare"`, `"event":"ca_activate"`}
	restart := func(phase string) {
		down.Store(true)
		_ = agent.Cmd.Process.Signal(syscall.SIGTERM)
		_ = agent.Cmd.Wait()
		agent = testutil.StartAgent(t, bin, cfg, sock)
		testutil.WaitServing(t, sock, 20*time.Second)
		// Back once a JWT-SVID fetch answers again.
		for until := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			if _, err := jwtSrc.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "aud"}); err == nil {
				break
			}
			if time.Now().After(until) {
				t.Fatalf("no JWT-SVID 20s after the restart after %s", phase)
			}
		}
		down.Store(false)
		t.Logf("agent restarted after %s", phase)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		mu.Lock()
		nr, nk := len(roots), len(kids)
		mu.Unlock()
		if len(restartAfter) > 0 {
			if data, _ := os.ReadFile(auditPath); strings.Contains(string(data), restartAfter[0]) {
				restart(restartAfter[0])
				restartAfter = restartAfter[1:]
			}
		}
		if nr >= 3 && nk >= 3 && len(restartAfter) == 0 {
			break
		}
		if time.Now().After(deadline) {
			stopLoops()
			wg.Wait()
			t.Fatalf("after 3 minutes: %d roots and %d JWT keys used, want 3 each (two rotations); failures: %v", nr, nk, failures)
		}
		time.Sleep(200 * time.Millisecond) // polling a condition with a deadline
	}
	stopLoops()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(failures) > 0 {
		t.Fatalf("%d failures over %d handshakes and %d validations through two rotations, first: %v", len(failures), handshake.Load(), validated.Load(), failures[:min(5, len(failures))])
	}
	t.Logf("%d handshakes, %d JWT validations, %d roots, %d JWT keys, zero failures", handshake.Load(), validated.Load(), len(roots), len(kids))
	auditLog, err := os.ReadFile(filepath.Join(dir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range []string{`"event":"ca_prepare"`, `"event":"ca_activate"`, `"event":"ca_retire"`} {
		if !strings.Contains(string(auditLog), ev) {
			t.Errorf("audit log lacks %s", ev)
		}
	}

	// rotate now, then taint the previous root: the open stream's SVID
	// moves to the new root within seconds.
	before, err := clientSrc.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	oldAKI := hex.EncodeToString(before.Certificates[len(before.Certificates)-1].AuthorityKeyId)
	out, stderr, code := testutil.Run(t, bin, nil, "ca", "rotate", "--data-dir", filepath.Join(dir, "data"))
	if code != 0 || !strings.Contains(out, "rotated") {
		t.Fatalf("ca rotate: %d %s %s", code, out, stderr)
	}
	out, stderr, code = testutil.Run(t, bin, nil, "ca", "taint", "--data-dir", filepath.Join(dir, "data"), oldAKI)
	if code != 0 || !strings.Contains(out, "tainted") {
		t.Fatalf("ca taint: %d %s %s", code, out, stderr)
	}
	// The agent applies the request within a second and the store
	// re-mints the tainted root's SVIDs at once: well under 3 s even on a
	// loaded machine (the SVIDs' own rotation is 4-6 s away at most).
	tainted := time.Now()
	reminted := tainted.Add(3 * time.Second)
	for {
		sv, err := clientSrc.GetX509SVID()
		if err == nil && hex.EncodeToString(sv.Certificates[len(sv.Certificates)-1].AuthorityKeyId) != oldAKI {
			break
		}
		if time.Now().After(reminted) {
			t.Fatal("the open stream still holds an SVID of the tainted root after 3s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("taint -> new SVID on the open stream in %v", time.Since(tainted).Round(10*time.Millisecond))
	bundle, err := clientSrc.GetX509BundleForTrustDomain(td)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range bundle.X509Authorities() {
		if hex.EncodeToString(r.SubjectKeyId) == oldAKI {
			t.Fatal("the tainted root is still in the streamed bundle")
		}
	}
}
