package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nodeward/nodeward/test/testutil"
)

func TestBrokerExchangesAtRealIdP(t *testing.T) {
	e := testutil.StartBrokerEnv(t, bin, 600)
	a := e.Token(t, "upstream=corp&audience=api")
	if a.Status != 200 || a.AccessToken == "" || a.TokenType != "Bearer" || a.ExpiresIn < 590 {
		t.Fatalf("token exchange: %+v\nbroker log:\n%s", a, e.Broker.Log())
	}
	again := e.Token(t, "upstream=corp&audience=api")
	if again.AccessToken != a.AccessToken || e.IdP.Grants(t) != 1 {
		t.Fatalf("second request not served from the cache (grants %d)", e.IdP.Grants(t))
	}
	jb := e.Token(t, "upstream=direct&scope=write")
	if jb.Status != 200 || jb.AccessToken == "" || jb.AccessToken == a.AccessToken {
		t.Fatalf("jwt-bearer: %+v", jb)
	}
	// The CLI face.
	out, errOut, code := testutil.Run(t, bin, nil, "token", "--socket", e.Sock, "--upstream", "corp", "--audience", "api")
	if code != 0 || strings.TrimSpace(out) != a.AccessToken {
		t.Fatalf("nodeward token: %d %q %s", code, out, errOut)
	}
	// No header: refused (SSRF guard).
	resp, err := e.Client.Get("http://broker/v1/token?upstream=corp")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("request without Nodeward-Request: %d", resp.StatusCode)
	}
	// The access token never reaches the broker's logs.
	if strings.Contains(e.Broker.Log(), a.AccessToken) || strings.Contains(e.Broker.Log(), "eyJhbGciOi") {
		t.Fatal("a token appears in the broker log")
	}
}

func TestBrokerRidesOutIdPOutage(t *testing.T) {
	e := testutil.StartBrokerEnv(t, bin, 600)
	cached := e.Token(t, "upstream=corp&audience=api")
	if cached.Status != 200 {
		t.Fatalf("initial token: %+v", cached)
	}
	// Total outage: the cached token keeps being served, zero failures.
	e.Proxy.Set(testutil.FaultReset)
	for i := range 200 {
		if a := e.Token(t, "upstream=corp&audience=api"); a.Status != 200 || a.AccessToken != cached.AccessToken {
			t.Fatalf("request %d during the outage: %+v", i, a)
		}
	}
	// A key with no cached token gets 503 + Retry-After at once; after two
	// failures the breaker is open and the IdP is no longer called.
	for range 2 {
		if a := e.Token(t, "upstream=corp&audience=new"); a.Status != 503 || a.RetryAfter == "" {
			t.Fatalf("new key during outage: %+v", a)
		}
	}
	before := e.Proxy.Requests.Load()
	start := time.Now()
	a := e.Token(t, "upstream=corp&audience=new")
	if a.Status != 503 || a.RetryAfter == "" || e.Proxy.Requests.Load() != before || time.Since(start) > time.Second {
		t.Fatalf("open breaker: %+v, IdP calls %d→%d in %v", a, before, e.Proxy.Requests.Load(), time.Since(start))
	}
	// `nodeward status --broker` shows the open breaker.
	metricsAddr := strings.TrimSuffix(strings.TrimPrefix(e.MetricsURL, "http://"), "/metrics")
	out, errOut, code := testutil.Run(t, bin, nil, "status", "--broker", metricsAddr)
	if code != 0 || !regexp.MustCompile(`(?m)^corp\s+token-exchange\s+open\s`).MatchString(out) ||
		!strings.Contains(out, "spiffe://example.org/broker") {
		t.Fatalf("status --broker during the outage: %d\n%s%s", code, out, errOut)
	}
	// Garbage and 429s are upstream errors, never cached tokens.
	// Poll until the breaker's 1 s open timeout lets a probe reach the IdP.
	e.Proxy.Set(testutil.FaultGarbage)
	deadline := time.Now().Add(10 * time.Second)
	for e.Proxy.Requests.Load() == before {
		if a := e.Token(t, "upstream=corp&audience=new"); a.Status != 503 {
			t.Fatalf("garbage from the IdP: %+v", a)
		}
		if time.Now().After(deadline) {
			t.Fatal("the breaker never let a probe through")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Recovery: once the breaker lets a probe through, new keys work again.
	e.Proxy.Set(testutil.FaultNone)
	deadline = time.Now().Add(10 * time.Second)
	for {
		a := e.Token(t, "upstream=corp&audience=new")
		if a.Status == 200 && a.AccessToken != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery after the outage: %+v\nbroker log:\n%s", a, e.Broker.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if a := e.Token(t, "upstream=corp&audience=api"); a.AccessToken != cached.AccessToken {
		t.Fatal("the cached token was dropped during the outage")
	}
	// The metrics tell the story: hits, upstream errors by class, breaker closed again.
	resp, err := http.Get(e.MetricsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`nodeward_broker_breaker_state{upstream="corp"} 0`,
		`nodeward_broker_upstream_errors_total{class="retryable",upstream="corp"}`,
		`nodeward_broker_upstream_errors_total{class="unavailable",upstream="corp"}`,
		`nodeward_broker_requests_total{status="503",upstream="corp"}`,
		`nodeward_broker_cache_hits_total 20`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(string(body), "spiffe://") || strings.Contains(string(body), cached.AccessToken) {
		t.Error("metrics carry a SPIFFE ID or a token")
	}
}

// TestUpstreamCallsIndependentOfLoad sends 10,000 requests over 100 keys
// from 32 clients: the IdP sees one call per key, not per request. (The
// per-caller upstream budget is raised above 100 keys: this measures
// coalescing, not the limits.)
func TestUpstreamCallsIndependentOfLoad(t *testing.T) {
	e := testutil.StartBrokerEnv(t, bin, 3600, "limits:\n  burst: 200\n")
	var wg sync.WaitGroup
	errs := make(chan string, 32)
	for g := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < 10000; i += 32 {
				if a := e.Token(t, fmt.Sprintf("upstream=corp&audience=aud-%d", i%100)); a.Status != 200 {
					errs <- fmt.Sprintf("request %d: %+v", i, a)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	if n := e.IdP.Grants(t); n != 100 {
		t.Fatalf("IdP issued %d tokens for 10,000 requests over 100 keys, want 100", n)
	}
}

func TestBrokerTokenFileSink(t *testing.T) {
	e := testutil.StartBrokerEnv(t, bin, 600, `sinks:
  - upstream: corp
    audience: files
    path: $DIR/token
    mode: "0640"
    on_rotate:
      command: [/bin/sh, -c, "cp $DIR/token $DIR/token.seen-by-command"]
`)
	path := filepath.Join(e.Dir, "token")
	deadline := time.Now().Add(10 * time.Second)
	var data []byte
	for {
		var err error
		if data, err = os.ReadFile(path); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("token file never written; broker log:\n%s", e.Broker.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o640 {
		t.Errorf("token file mode %v, want 0640", st.Mode().Perm())
	}
	a := e.Token(t, "upstream=corp&audience=files")
	if a.Status != 200 || strings.TrimSpace(string(data)) != a.AccessToken {
		t.Fatalf("file holds another token than the API serves: %+v", a)
	}
	// The on_rotate command ran after the write and saw the new token.
	deadline = time.Now().Add(10 * time.Second)
	for {
		if seen, err := os.ReadFile(path + ".seen-by-command"); err == nil && strings.TrimSpace(string(seen)) == a.AccessToken {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("on_rotate command did not run after the write; broker log:\n%s", e.Broker.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestBrokerDropsTokensOfRevokedIdentity removes the broker's entry from the
// agent's policy (SIGHUP): its cached tokens stop being served at once.
func TestBrokerDropsTokensOfRevokedIdentity(t *testing.T) {
	e := testutil.StartBrokerEnv(t, bin, 600)
	if a := e.Token(t, "upstream=corp&audience=api"); a.Status != 200 {
		t.Fatalf("token: %+v", a)
	}
	cfg, err := os.ReadFile(e.AgentConfig)
	if err != nil {
		t.Fatal(err)
	}
	revoked := cfg[:strings.Index(string(cfg), "entries:")]
	if err := os.WriteFile(e.AgentConfig, revoked, 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_ = e.Agent.Cmd.Process.Signal(syscall.SIGHUP)
	deadline := start.Add(10 * time.Second)
	for {
		a := e.Token(t, "upstream=corp&audience=api")
		if a.Status == 503 {
			t.Logf("broker stopped serving the revoked identity's token %v after SIGHUP", time.Since(start).Round(time.Millisecond))
			break
		}
		if a.Status != 200 || time.Now().After(deadline) {
			t.Fatalf("after revocation: %+v\nbroker log:\n%s", a, e.Broker.Log())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !strings.Contains(e.Broker.Log(), "tokens of the old identity dropped") {
		t.Error("broker did not log the purge")
	}
}

// TestBrokerInsideAgent runs the broker from the agent's own config (`broker:`).
func TestBrokerInsideAgent(t *testing.T) {
	dir := testutil.SocketDir(t)
	admin := "127.0.0.1:" + testutil.FreePort(t)
	idp := testutil.StartIdPLater(t)
	bsock := filepath.Join(dir, "broker.sock")
	baudit := filepath.Join(dir, "broker-audit.log")
	extra := fmt.Sprintf(`admin_listen: %s
entries:
  - spiffe_id: spiffe://example.org/node-broker
    selectors: [unix:uid:%d, "unix:path:%s"]
broker:
  listen: %s
  audit_log: %s
  upstreams:
    - name: corp
      token_endpoint: %s/token
      grant: token-exchange
      client_id: nodeward-broker
      svid_audience: nodeward-idp
`, admin, os.Geteuid(), bin, bsock, baudit, idp.URL)
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", extra)
	a := testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 10*time.Second)
	idp.Start(t, "http://"+admin+"/keys", "nodeward-idp", "example.org", 600)
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, errOut, code := testutil.Run(t, bin, nil, "token", "--socket", bsock, "--upstream", "corp", "--audience", "api")
		if code == 0 && len(strings.TrimSpace(out)) > 20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no token from the broker inside the agent: %d %s %s\nagent log:\n%s", code, out, errOut, a.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// SIGUSR1 to the agent also reopens the embedded broker's audit log
	// (log rotation).
	if err := os.Rename(baudit, baudit+".1"); err != nil {
		t.Fatalf("the embedded broker wrote no audit log: %v", err)
	}
	_ = a.Cmd.Process.Signal(syscall.SIGUSR1)
	deadline = time.Now().Add(10 * time.Second)
	for {
		testutil.Run(t, bin, nil, "token", "--socket", bsock, "--upstream", "corp", "--audience", "api")
		if st, err := os.Stat(baudit); err == nil && st.Size() > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("SIGUSR1 did not reopen the embedded broker's audit log\nagent log:\n%s", a.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The identity inventory counts the tokens the embedded broker served
	// on the broker's entry.
	deadline = time.Now().Add(10 * time.Second)
	for {
		out, _, _ := testutil.Run(t, bin, nil, "inventory", "--admin", admin, "--json")
		if regexp.MustCompile(`(?s)"spiffe_id":\s*"spiffe://example.org/node-broker".*"tokens_issued":\s*[1-9]`).MatchString(out) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("inventory does not count the broker's tokens:\n%s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// `nodeward status` shows the broker inside the agent.
	out, errOut, code := testutil.Run(t, bin, nil, "status", "--admin", admin)
	if code != 0 || !strings.Contains(out, "broker (inside the agent)") ||
		!regexp.MustCompile(`(?m)^corp\s+token-exchange\s+closed\s`).MatchString(out) {
		t.Fatalf("status with an embedded broker: %d\n%s%s", code, out, errOut)
	}
	// A bad broker section names the file and line.
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("trust_domain: example.org\nbroker:\n  listen: /tmp/x.sock\n  upstreams:\n    - name: corp\n      token_endpoint: https://idp/token\n      grant: password\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = testutil.Run(t, bin, nil, "agent", "--config", bad)
	if code != 78 || !strings.Contains(errOut, "bad.yaml:7: upstreams[0].grant") {
		t.Fatalf("bad broker section: %d %s", code, errOut)
	}
}

// TestBrokerClientAssertionAtRealIdP: client_credentials with the JWT-SVID as
// the RFC 7523 §2.2 client assertion (client_id = the broker's SPIFFE ID,
// aud = the token endpoint) against the real IdP.
func TestBrokerClientAssertionAtRealIdP(t *testing.T) {
	e := testutil.StartBrokerEnv(t, bin, 600)
	a := e.Token(t, "upstream=assert")
	if a.Status != 200 || a.AccessToken == "" || a.TokenType != "Bearer" || a.ExpiresIn < 590 {
		t.Fatalf("client-assertion: %+v\nbroker log:\n%s", a, e.Broker.Log())
	}
	if g := e.IdP.Grants(t); g != 1 {
		t.Fatalf("IdP counted %d grants, want 1", g)
	}
	if again := e.Token(t, "upstream=assert"); again.AccessToken != a.AccessToken {
		t.Fatal("second request not served from the cache")
	}
	// A client_id that is not the SVID's subject: the IdP refuses the
	// client (401 invalid_client), which the caller sees as 502.
	bad := e.Token(t, "upstream=assert-other")
	if bad.Status != 502 || bad.Error != "upstream_rejected" || bad.AccessToken != "" {
		t.Fatalf("assertion for another client_id: %+v", bad)
	}
}
