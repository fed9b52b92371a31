package testutil

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// IdP is the real OAuth2 authorization server of test/idp (oidc-provider)
// running as a child process.
type IdP struct {
	URL  string
	port string
	cmd  *exec.Cmd
}

// StartIdP starts test/idp/server.mjs on a free port, trusting JWT-SVIDs of
// trustDomain with audience svidAudience signed by the keys at jwksURL. It
// skips the test when Node or the harness's npm packages are missing, except
// under CI, where they must be there (.ci/run installs them).
func StartIdP(t testing.TB, jwksURL, svidAudience, trustDomain string, tokenTTL int) *IdP {
	t.Helper()
	i := StartIdPLater(t)
	i.Start(t, jwksURL, svidAudience, trustDomain, tokenTTL)
	return i
}

// StartIdPLater reserves the IdP's port (so its URL can go into configs)
// without starting it: call Start once the agent's JWKS is reachable.
func StartIdPLater(t testing.TB) *IdP {
	t.Helper()
	port := FreePort(t)
	return &IdP{URL: "http://127.0.0.1:" + port, port: port}
}

// Start runs the IdP on the reserved port.
func (i *IdP) Start(t testing.TB, jwksURL, svidAudience, trustDomain string, tokenTTL int) {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(file), "..", "idp")
	if _, err := exec.LookPath("node"); err != nil || !exists(filepath.Join(dir, "node_modules", "oidc-provider")) {
		if os.Getenv("CI") != "" {
			t.Fatalf("the test IdP needs node and `npm ci` in %s (CI must install them)", dir)
		}
		t.Skipf("the test IdP needs node and `npm ci` in %s", dir)
	}
	cmd := exec.Command("node", "server.mjs", i.port, jwksURL, svidAudience, trustDomain)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), fmt.Sprintf("IDP_TOKEN_TTL=%d", tokenTTL))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr LockedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("IdP stderr:\n%s", stderr.String())
		}
	})
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.TrimSpace(sc.Text()) == "ready" {
				ready <- nil
				return
			}
		}
		ready <- fmt.Errorf("IdP exited before it was ready")
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("IdP not ready within 20s")
	}
	i.cmd = cmd
}

// idpStats is the IdP's GET /stats.
type idpStats struct {
	Grants        int `json:"grants"`
	TokenRequests int `json:"token_requests"`
}

func (i *IdP) stats(t testing.TB) idpStats {
	t.Helper()
	resp, err := http.Get(i.URL + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s idpStats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// Grants returns how many tokens the IdP has issued.
func (i *IdP) Grants(t testing.TB) int { t.Helper(); return i.stats(t).Grants }

// TokenRequests returns how many requests reached the IdP's token endpoint.
func (i *IdP) TokenRequests(t testing.TB) int { t.Helper(); return i.stats(t).TokenRequests }

// Misbehave switches on one of the IdP's misbehaviours ("" for none):
// short (expires_in 1), mac, dpop (that token_type), retry-after (429 with
// Retry-After: 999999), echo (an error_description quoting the assertion).
func (i *IdP) Misbehave(t testing.TB, mode string) {
	t.Helper()
	resp, err := http.Post(i.URL+"/misbehave?mode="+mode, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("IdP misbehave %q: HTTP %d", mode, resp.StatusCode)
	}
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// FreePort returns a free loopback TCP port.
func FreePort(t testing.TB) string {
	t.Helper()
	l, err := netListen()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := strings.Cut(l.Addr().String(), ":")
	return port
}
