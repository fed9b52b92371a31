package e2e

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nodeward/nodeward/test/testutil"
	"gopkg.in/yaml.v3"
)

// gamedayReport is the part of `nodeward gameday --json` the tests read.
type gamedayReport struct {
	Phases []struct {
		Name      string  `json:"name"`
		OK        bool    `json:"ok"`
		Detail    string  `json:"detail"`
		Requests  int     `json:"requests"`
		FromCache int     `json:"served_from_cache"`
		Status503 int     `json:"status_503"`
		Other     int     `json:"other"`
		P95MS     float64 `json:"latency_p95_ms"`
		Seconds   float64 `json:"seconds"`
	} `json:"phases"`
	SLOs []struct {
		Name string `json:"name"`
		Pass bool   `json:"pass"`
	} `json:"slos"`
	Reverted bool `json:"reverted"`
	Passed   bool `json:"passed"`
}

func metricsAddrOf(e *testutil.BrokerEnv) string {
	return strings.TrimSuffix(strings.TrimPrefix(e.MetricsURL, "http://"), "/metrics")
}

// warmBroker polls until the broker serves a token for query (the agent
// may still be starting).
func warmBroker(t *testing.T, e *testutil.BrokerEnv, query string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		a := e.Token(t, query)
		if a.Status == 200 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no token for %s: %+v\nbroker log:\n%s", query, a, e.Broker.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// breakerClosed asserts the breaker of corp is closed and not forced.
func breakerClosed(t *testing.T, e *testutil.BrokerEnv, within time.Duration) {
	t.Helper()
	m := metricsAddrOf(e)
	forced := pollMetric(t, m, `nodeward_broker_breaker_forced{upstream="corp"}`, within, func(v float64) bool { return v == 0 })
	state := pollMetric(t, m, `nodeward_broker_breaker_state{upstream="corp"}`, within, func(v float64) bool { return v == 0 })
	if forced != 0 || state != 0 {
		t.Fatalf("breaker of corp: forced %v state %v, want 0 0\nbroker log:\n%s", forced, state, e.Broker.Log())
	}
}

// TestGamedayRehearsesIdPOutage: a real agent, broker and IdP; gameday
// forces corp's breaker open, a pre-warmed token keeps being served from
// the cache, an unwarmed audience gets 503 with Retry-After, the breaker is
// closed again afterwards and a fresh token is fetched from the IdP.
func TestGamedayRehearsesIdPOutage(t *testing.T) {
	e := testutil.StartBrokerEnv(t, bin, 600)
	warmBroker(t, e, "upstream=corp&audience=api")
	grants := e.IdP.Grants(t)
	out, errOut, code := testutil.Run(t, bin, nil, "gameday", "--broker", e.Sock, "--upstream", "corp", "--audience", "api",
		"--outage", "60s", "--requests", "20", "--interval", "10ms", "--json")
	var rep gamedayReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("gameday: %d %v\n%s%s", code, err, out, errOut)
	}
	if !rep.Reverted || (rep.Passed && code != 0) || (!rep.Passed && code != 1) {
		t.Fatalf("gameday exit %d, report reverted %v passed %v\n%s%s", code, rep.Reverted, rep.Passed, out, errOut)
	}
	phases := map[string]int{}
	for i, p := range rep.Phases {
		phases[p.Name] = i
	}
	for _, name := range []string{"preflight", "warm", "outage: pre-warmed token", "outage: token not cached", "revert", "recovery: fresh upstream token"} {
		i, ok := phases[name]
		if !ok || !rep.Phases[i].OK {
			t.Fatalf("phase %q missing or failed:\n%s", name, out)
		}
	}
	warm := rep.Phases[phases["outage: pre-warmed token"]]
	if warm.Requests != 20 || warm.FromCache != 20 || warm.Status503 != 0 || warm.P95MS <= 0 {
		t.Fatalf("pre-warmed token during the outage: %+v", warm)
	}
	miss := rep.Phases[phases["outage: token not cached"]]
	if miss.Requests < 1 || miss.Status503 != miss.Requests || miss.FromCache != 0 {
		t.Fatalf("unwarmed audience during the outage: %+v", miss)
	}
	if rec := rep.Phases[phases["recovery: fresh upstream token"]]; rec.Seconds <= 0 || rec.Seconds > 60 {
		t.Fatalf("recovery: %+v", rec)
	}
	for _, s := range rep.SLOs {
		if strings.HasPrefix(s.Name, "issuance") && !s.Pass {
			t.Fatalf("issuance SLO failed although every request was served from cache:\n%s", out)
		}
	}
	// Afterwards: closed, not forced, and the recovery fetched a fresh
	// token from the IdP (during the outage it was never asked).
	breakerClosed(t, e, 5*time.Second)
	if g := e.IdP.Grants(t); g != grants+1 {
		t.Fatalf("IdP grants %d → %d; want exactly one (the recovery)", grants, g)
	}
	// The human report says the same.
	out, errOut, code = testutil.Run(t, bin, nil, "gameday", "--broker", e.Sock, "--upstream", "corp", "--audience", "api",
		"--outage", "60s", "--requests", "5", "--interval", "0s")
	if !strings.Contains(out, "outage: pre-warmed token") || !strings.Contains(out, "5 of 5 served from cache") ||
		!strings.Contains(out, "breaker reverted") || (code != 0 && code != 1) {
		t.Fatalf("human report: %d\n%s%s", code, out, errOut)
	}
	t.Logf("gameday report (exit %d):\n%s", code, out)
	// Audit records: forced by whom, for how long, and the revert.
	log := e.Broker.Log()
	if !strings.Contains(log, `"event":"breaker_force"`) || !strings.Contains(log, `"reason":"forced_open for 1m0s"`) ||
		!strings.Contains(log, `"reason":"reverted"`) || !strings.Contains(log, `"caller":{"pid"`) {
		t.Fatalf("no breaker_force audit records:\n%s", log)
	}
}

// TestGamedayKilledMidOutageBrokerReverts: gameday killed -9 during the
// outage cannot revert; the broker does so itself at the deadline.
func TestGamedayKilledMidOutageBrokerReverts(t *testing.T) {
	e := testutil.StartBrokerEnv(t, bin, 600)
	warmBroker(t, e, "upstream=corp&audience=api")
	cmd := exec.Command(bin, "gameday", "--broker", e.Sock, "--upstream", "corp", "--audience", "api",
		"--outage", "4s", "--requests", "1000", "--interval", "100ms")
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m := metricsAddrOf(e)
	if v := pollMetric(t, m, `nodeward_broker_breaker_forced{upstream="corp"}`, 20*time.Second, func(v float64) bool { return v == 1 }); v != 1 {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("never forced:\n%s\nbroker log:\n%s", buf.String(), e.Broker.Log())
	}
	killed := time.Now()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if v := scrape(t, m, `nodeward_broker_breaker_state{upstream="corp"}`); v != 2 && time.Since(killed) < 3*time.Second {
		t.Fatalf("breaker state %v right after the kill, want 2 (open)", v)
	}
	// A request that needs the IdP during the outage: 503.
	if a := e.Token(t, "upstream=corp&audience=during-outage"); a.Status != 503 && time.Since(killed) < 3*time.Second {
		t.Fatalf("uncached token during the forced outage: %+v", a)
	}
	breakerClosed(t, e, 30*time.Second)
	warmBroker(t, e, "upstream=corp&audience=after-outage")
	if !strings.Contains(e.Broker.Log(), `"reason":"expired"`) {
		t.Fatalf("no audit record of the expiry:\n%s", e.Broker.Log())
	}
}

// TestGamedayRefusals: another uid may not force the breaker (the broker
// refuses), and a production node refuses without --allow-production
// (gameday and, for a direct request, the broker).
func TestGamedayRefusals(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run gameday under another uid")
	}
	e := testutil.StartBrokerEnv(t, bin, 600, "environment: production\n")
	warmBroker(t, e, "upstream=corp&audience=api")
	nodeward := publicCopy(t, e.Dir)
	cmd := exec.Command(nodeward, "gameday", "--broker", e.Sock, "--upstream", "corp", "--allow-production")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "HTTP 403") {
		t.Fatalf("gameday as uid 65534: %v\n%s", err, out)
	}
	breakerClosed(t, e, time.Second)

	// Production, no flag: gameday refuses before forcing anything.
	out2, errOut, code := testutil.Run(t, bin, nil, "gameday", "--broker", e.Sock, "--upstream", "corp", "--audience", "api")
	if code == 0 || !strings.Contains(errOut, "--allow-production") {
		t.Fatalf("production without --allow-production: %d\n%s%s", code, out2, errOut)
	}
	breakerClosed(t, e, time.Second)
	// The broker refuses too, whoever asks without the confirmation.
	req, _ := http.NewRequest(http.MethodPost, "http://broker/v1/breaker/force?upstream=corp&duration=30s", nil)
	req.Header.Set("Nodeward-Request", "true")
	resp, err := e.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusConflict {
		t.Fatalf("broker force on production without confirm_production: %d", resp.StatusCode)
	}
	breakerClosed(t, e, time.Second)
	// With the flag it runs, and reverts.
	out2, errOut, code = testutil.Run(t, bin, nil, "gameday", "--broker", e.Sock, "--upstream", "corp", "--audience", "api",
		"--allow-production", "--requests", "3", "--interval", "0s", "--json")
	var rep gamedayReport
	if err := json.Unmarshal([]byte(out2), &rep); err != nil || !rep.Reverted || (code != 0 && code != 1) {
		t.Fatalf("production with --allow-production: %d %v\n%s%s", code, err, out2, errOut)
	}
	breakerClosed(t, e, 5*time.Second)
}

// TestGamedaySIGTERMReverts: a gameday stopped by SIGTERM mid-outage
// reverts the force itself, long before the broker's deadline, and says so.
func TestGamedaySIGTERMReverts(t *testing.T) {
	e := testutil.StartBrokerEnv(t, bin, 600)
	warmBroker(t, e, "upstream=corp&audience=api")
	cmd := exec.Command(bin, "gameday", "--broker", e.Sock, "--upstream", "corp", "--audience", "api",
		"--outage", "10m", "--requests", "1000", "--interval", "100ms", "--json")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m := metricsAddrOf(e)
	if v := pollMetric(t, m, `nodeward_broker_breaker_forced{upstream="corp"}`, 20*time.Second, func(v float64) bool { return v == 1 }); v != 1 {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("never forced:\n%s%s", stdout.String(), stderr.String())
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	var rep gamedayReport
	if jerr := json.Unmarshal(stdout.Bytes(), &rep); jerr != nil || !rep.Reverted || rep.Passed || err == nil {
		t.Fatalf("after SIGTERM: exit %v, report %+v (%v)\n%s%s", err, rep, jerr, stdout.String(), stderr.String())
	}
	// Reverted by gameday, not by the 10-minute deadline.
	breakerClosed(t, e, 5*time.Second)
	if !strings.Contains(e.Broker.Log(), `"reason":"reverted"`) {
		t.Fatalf("no audit record of the revert:\n%s", e.Broker.Log())
	}
}

// TestGamedayRevocationRehearsal: gameday, run as the workload of a test
// entry, takes that entry away through the agent's suspend channel and
// measures the time to revoke on its own Workload API stream, then
// resumes it; the agent's audit trail says suspend and resume. A killed
// gameday leaves the entry suspended only until the agent's deadline.
func TestGamedayRevocationRehearsal(t *testing.T) {
	e := testutil.StartBrokerEnv(t, bin, 600)
	warmBroker(t, e, "upstream=corp&audience=api")
	var cfg struct {
		AdminListen string `yaml:"admin_listen"`
		SocketPath  string `yaml:"socket_path"`
		DataDir     string `yaml:"data_dir"`
	}
	b, err := os.ReadFile(e.AgentConfig)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	// The test entry: the one this binary run by this uid matches.
	out, _, code := testutil.Run(t, bin, nil, "inventory", "--admin", cfg.AdminListen, "--json")
	var inv struct {
		Entries []struct {
			EntryID  string `json:"entry_id"`
			SPIFFEID string `json:"spiffe_id"`
		} `json:"entries"`
	}
	if err := json.Unmarshal([]byte(out), &inv); err != nil || code != 0 || len(inv.Entries) != 1 {
		t.Fatalf("inventory: %d %v\n%s", code, err, out)
	}
	entry := inv.Entries[0].EntryID
	out, errOut, code := testutil.Run(t, bin, nil, "gameday", "--broker", e.Sock, "--upstream", "corp", "--audience", "api",
		"--outage", "30s", "--requests", "3", "--interval", "0s", "--json",
		"--revoke-entry", entry, "--revoke-for", "60s", "--socket", cfg.SocketPath, "--data-dir", cfg.DataDir)
	var rep gamedayReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("gameday: %d %v\n%s%s", code, err, out, errOut)
	}
	var found bool
	for _, p := range rep.Phases {
		if p.Name == "revocation of "+entry {
			found = true
			if !p.OK || p.Seconds <= 0 || p.Seconds > 10 {
				t.Fatalf("revocation phase: %+v\n%s", p, out)
			}
			t.Logf("time to revoke measured by gameday: %.2fs (%s)", p.Seconds, p.Detail)
		}
	}
	if !found {
		t.Fatalf("no revocation phase:\n%s%s", out, errOut)
	}
	for _, s := range rep.SLOs {
		if strings.HasPrefix(s.Name, "time to revoke") && !s.Pass {
			t.Fatalf("time-to-revoke SLO failed:\n%s", out)
		}
	}
	alog, _ := os.ReadFile(filepath.Join(filepath.Dir(e.AgentConfig), "audit.log"))
	if !strings.Contains(string(alog), `"event":"suspend"`) || !strings.Contains(string(alog), `"event":"resume"`) {
		t.Fatalf("no suspend/resume audit records:\n%s", alog)
	}
	// The entry serves again.
	if _, errOut, code := testutil.Run(t, bin, nil, "fetch", "x509", "--socket", cfg.SocketPath); code != 0 {
		t.Fatalf("entry not back after the rehearsal: %s", errOut)
	}

	// A suspension whose gameday died ends at its deadline.
	req := filepath.Join(cfg.DataDir, "suspend", entry)
	if err := os.WriteFile(req, []byte("2s"), 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	gone := false
	for time.Now().Before(deadline) {
		_, _, code := testutil.Run(t, bin, nil, "fetch", "x509", "--socket", cfg.SocketPath)
		if code != 0 {
			gone = true
		} else if gone {
			return // taken away, then back by itself
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("suspension without gameday: taken away %v, not back by itself within 10s", gone)
}
