package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodeward/nodeward/test/testutil"
)

type brokerEnv struct {
	idp    *testutil.IdP
	proxy  *testutil.FaultProxy
	sock   string
	client *http.Client
	broker *testutil.Agent
}

// startBrokerEnv runs a real agent, the real IdP (oidc-provider) behind a
// fault-injecting proxy, and the nodeward broker binary.
func startBrokerEnv(t *testing.T, tokenTTL int) *brokerEnv {
	t.Helper()
	dir := testutil.SocketDir(t)
	admin := "127.0.0.1:" + testutil.FreePort(t)
	entries := fmt.Sprintf("admin_listen: %s\nentries:\n  - spiffe_id: spiffe://example.org/broker\n    selectors: [unix:uid:%d, \"unix:path:%s\"]\n", admin, os.Geteuid(), bin)
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", entries)
	testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 10*time.Second)

	idp := testutil.StartIdP(t, "http://"+admin+"/keys", "nodeward-idp", "example.org", tokenTTL)
	proxy := testutil.StartFaultProxy(t, idp.URL)

	bsock := filepath.Join(dir, "broker.sock")
	bcfg := filepath.Join(dir, "broker.yaml")
	err := os.WriteFile(bcfg, []byte(fmt.Sprintf(`workload_socket: unix://%s
listen: %s
upstreams:
  - name: corp
    token_endpoint: %s/token
    grant: token-exchange
    client_id: nodeward-broker
    svid_audience: nodeward-idp
    scopes: [read]
    timeout: 1s
  - name: direct
    token_endpoint: %s/token
    grant: jwt-bearer
    client_id: nodeward-broker
    svid_audience: nodeward-idp
cache:
  safety_margin: 1s
breaker:
  consecutive_failures: 2
  open_timeout: 1s
log_level: debug
`, sock, bsock, proxy.URL, idp.URL)), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	b := testutil.StartProcess(t, bin, bsock, "broker", "--config", bcfg)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", bsock)
	}}}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(bsock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("broker socket never appeared; log:\n%s", b.Log())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return &brokerEnv{idp: idp, proxy: proxy, sock: bsock, client: client, broker: b}
}

type tokenAnswer struct {
	Status      int
	RetryAfter  string
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int    `json:"expires_in"`
	Error       string `json:"error"`
	Description string `json:"error_description"`
}

func (e *brokerEnv) token(t *testing.T, query string) tokenAnswer {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://broker/v1/token?"+query, nil)
	req.Header.Set("Nodeward-Request", "true")
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var a tokenAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		t.Fatalf("answer %q: %v", body, err)
	}
	a.Status, a.RetryAfter = resp.StatusCode, resp.Header.Get("Retry-After")
	return a
}

func TestBrokerExchangesAtRealIdP(t *testing.T) {
	e := startBrokerEnv(t, 600)
	a := e.token(t, "upstream=corp&audience=api")
	if a.Status != 200 || a.AccessToken == "" || a.TokenType != "Bearer" || a.ExpiresIn < 590 {
		t.Fatalf("token exchange: %+v\nbroker log:\n%s", a, e.broker.Log())
	}
	again := e.token(t, "upstream=corp&audience=api")
	if again.AccessToken != a.AccessToken || e.idp.Grants(t) != 1 {
		t.Fatalf("second request not served from the cache (grants %d)", e.idp.Grants(t))
	}
	jb := e.token(t, "upstream=direct&scope=write")
	if jb.Status != 200 || jb.AccessToken == "" || jb.AccessToken == a.AccessToken {
		t.Fatalf("jwt-bearer: %+v", jb)
	}
	// The CLI face.
	out, errOut, code := testutil.Run(t, bin, nil, "token", "--socket", e.sock, "--upstream", "corp", "--audience", "api")
	if code != 0 || strings.TrimSpace(out) != a.AccessToken {
		t.Fatalf("nodeward token: %d %q %s", code, out, errOut)
	}
	// No header: refused (SSRF guard).
	resp, err := e.client.Get("http://broker/v1/token?upstream=corp")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("request without Nodeward-Request: %d", resp.StatusCode)
	}
	// The access token never reaches the broker's logs.
	if strings.Contains(e.broker.Log(), a.AccessToken) || strings.Contains(e.broker.Log(), "eyJhbGciOi") {
		t.Fatal("a token appears in the broker log")
	}
}

func TestBrokerRidesOutIdPOutage(t *testing.T) {
	e := startBrokerEnv(t, 600)
	cached := e.token(t, "upstream=corp&audience=api")
	if cached.Status != 200 {
		t.Fatalf("initial token: %+v", cached)
	}
	// Total outage: the cached token keeps being served, zero failures.
	e.proxy.Set(testutil.FaultReset)
	for i := range 200 {
		if a := e.token(t, "upstream=corp&audience=api"); a.Status != 200 || a.AccessToken != cached.AccessToken {
			t.Fatalf("request %d during the outage: %+v", i, a)
		}
	}
	// A key with no cached token gets 503 + Retry-After at once; after two
	// failures the breaker is open and the IdP is no longer called.
	for range 2 {
		if a := e.token(t, "upstream=corp&audience=new"); a.Status != 503 || a.RetryAfter == "" {
			t.Fatalf("new key during outage: %+v", a)
		}
	}
	before := e.proxy.Requests.Load()
	start := time.Now()
	a := e.token(t, "upstream=corp&audience=new")
	if a.Status != 503 || a.RetryAfter == "" || e.proxy.Requests.Load() != before || time.Since(start) > time.Second {
		t.Fatalf("open breaker: %+v, IdP calls %d→%d in %v", a, before, e.proxy.Requests.Load(), time.Since(start))
	}
	// Garbage and 429s are upstream errors, never cached tokens.
	// Poll until the breaker's 1 s open timeout lets a probe reach the IdP.
	e.proxy.Set(testutil.FaultGarbage)
	deadline := time.Now().Add(10 * time.Second)
	for e.proxy.Requests.Load() == before {
		if a := e.token(t, "upstream=corp&audience=new"); a.Status != 503 {
			t.Fatalf("garbage from the IdP: %+v", a)
		}
		if time.Now().After(deadline) {
			t.Fatal("the breaker never let a probe through")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Recovery: once the breaker lets a probe through, new keys work again.
	e.proxy.Set(testutil.FaultNone)
	deadline = time.Now().Add(10 * time.Second)
	for {
		a := e.token(t, "upstream=corp&audience=new")
		if a.Status == 200 && a.AccessToken != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery after the outage: %+v\nbroker log:\n%s", a, e.broker.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if a := e.token(t, "upstream=corp&audience=api"); a.AccessToken != cached.AccessToken {
		t.Fatal("the cached token was dropped during the outage")
	}
}
