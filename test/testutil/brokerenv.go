package testutil

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
)

// BrokerEnv is a real agent, the real IdP behind a fault-injecting proxy,
// and a nodeward broker process, wired together.
type BrokerEnv struct {
	IdP    *IdP
	Proxy  *FaultProxy
	Sock   string
	Client *http.Client
	Broker *Agent
	Dir    string
	// MetricsURL is the broker's /metrics.
	MetricsURL string
	// Agent is the nodeward agent process; AgentConfig its config file.
	Agent       *Agent
	AgentConfig string
}

// StartBrokerEnv runs a real agent, the real IdP (oidc-provider) behind a
// fault-injecting proxy, and the nodeward broker binary bin. Upstream "corp"
// (token exchange) goes through the proxy, "direct" (jwt-bearer) does not.
// Extra YAML (top-level keys such as sinks) is appended to the broker config;
// the broker's directory is BrokerEnv.Dir.
func StartBrokerEnv(t testing.TB, bin string, tokenTTL int, extra ...string) *BrokerEnv {
	t.Helper()
	dir := SocketDir(t)
	admin := "127.0.0.1:" + FreePort(t)
	entries := fmt.Sprintf("admin_listen: %s\nentries:\n  - spiffe_id: spiffe://example.org/broker\n    selectors: [unix:uid:%d, \"unix:path:%s\"]\n", admin, os.Geteuid(), bin)
	cfg, sock := WriteConfig(t, dir, "example.org", entries)
	agent := StartAgent(t, bin, cfg, sock)
	WaitServing(t, sock, 10*time.Second)

	idp := StartIdP(t, "http://"+admin+"/keys", "nodeward-idp", "example.org", tokenTTL)
	proxy := StartFaultProxy(t, idp.URL)

	bsock := filepath.Join(dir, "broker.sock")
	metrics := "127.0.0.1:" + FreePort(t)
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
    timeout: 5s
  - name: direct
    token_endpoint: %s/token
    grant: jwt-bearer
    client_id: nodeward-broker
    svid_audience: nodeward-idp
  - name: assert
    token_endpoint: %s/token
    grant: client-assertion
    client_id: spiffe://example.org/broker
    scopes: [read]
  - name: assert-other
    token_endpoint: %s/token
    grant: client-assertion
    client_id: spiffe://example.org/someone-else
cache:
  safety_margin: 1s
breaker:
  consecutive_failures: 2
  open_timeout: 1s
  max_retry_after: 3s
log_level: debug
metrics_listen: %s
%s`, sock, bsock, proxy.URL, idp.URL, idp.URL, idp.URL, metrics, strings.ReplaceAll(strings.Join(extra, ""), "$DIR", dir))), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	b := StartProcess(t, bin, bsock, "broker", "--config", bcfg)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
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
	return &BrokerEnv{IdP: idp, Proxy: proxy, Sock: bsock, Client: client, Broker: b, Dir: dir, Agent: agent, AgentConfig: cfg, MetricsURL: "http://" + metrics + "/metrics"}
}

// TokenAnswer is the broker's answer to GET /v1/token.
type TokenAnswer struct {
	Status      int
	RetryAfter  string
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int    `json:"expires_in"`
	Error       string `json:"error"`
	Description string `json:"error_description"`
}

// Token asks the broker for a token with the given query.
func (e *BrokerEnv) Token(t testing.TB, query string) TokenAnswer {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://broker/v1/token?"+query, nil)
	req.Header.Set("Nodeward-Request", "true")
	resp, err := e.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var a TokenAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		t.Fatalf("answer %q: %v", body, err)
	}
	a.Status, a.RetryAfter = resp.StatusCode, resp.Header.Get("Retry-After")
	return a
}
