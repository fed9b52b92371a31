package e2e

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/nodeward/nodeward/test/spire"
	"github.com/nodeward/nodeward/test/testutil"
)

// exported maps each metric family a running binary exports to the label
// names its series carry (histogram _bucket/_sum/_count series are listed
// under their own names, as PromQL sees them).
type exported map[string]map[string]bool

func scrapeFamilies(t *testing.T, url string, into exported) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	labelName := regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="`)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, rest, _ := strings.Cut(line, "{")
		name = strings.Fields(name)[0]
		if into[name] == nil {
			into[name] = map[string]bool{}
		}
		if labels, _, ok := strings.Cut(rest, "}"); ok {
			for _, m := range labelName.FindAllStringSubmatch(labels, -1) {
				into[name][m[1]] = true
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
}

var (
	promMetric = regexp.MustCompile(`\b(nodeward[_:][a-zA-Z0-9_:]*|process_[a-z_]+|go_[a-z_]+)\b`)
	promBy     = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	promMatch  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"`)
)

// Labels Prometheus adds at scrape time, and the histogram bucket label.
var scrapeLabels = map[string]bool{"instance": true, "job": true, "le": true}

// checkQuery reports the metrics and labels of one PromQL expression that
// the binaries do not export. Recording rules (nodeward:…) are expanded to
// the expressions that define them.
func checkQuery(t *testing.T, where, expr string, have exported, rules map[string]string, depth int) {
	t.Helper()
	var raw []string
	for _, m := range promMetric.FindAllString(expr, -1) {
		if strings.Contains(m, ":") {
			def, ok := rules[m]
			if !ok {
				t.Errorf("%s: %s is not a recording rule of nodeward.rules.yml", where, m)
				continue
			}
			if depth < 3 {
				checkQuery(t, where+" → "+m, def, have, rules, depth+1)
			}
			continue
		}
		if have[m] == nil {
			t.Errorf("%s: metric %s is not exported by the agent or the broker", where, m)
			continue
		}
		raw = append(raw, m)
	}
	if len(raw) == 0 {
		return
	}
	var labels []string
	for _, g := range promBy.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(g[1], ",") {
			labels = append(labels, strings.TrimSpace(l))
		}
	}
	for _, g := range promMatch.FindAllStringSubmatch(expr, -1) {
		labels = append(labels, g[1])
	}
	for _, l := range labels {
		if l == "" || scrapeLabels[l] {
			continue
		}
		found := false
		for _, m := range raw {
			found = found || have[m][l]
		}
		if !found {
			t.Errorf("%s: label %q is on none of %v", where, l, raw)
		}
	}
}

// TestDashboardQueriesMatchExportedMetrics scrapes a running agent and
// broker, after real traffic (SVIDs, tokens, a refused upstream call, a
// background refresh), and checks that every query of the Grafana dashboard
// and every SLO recording rule and alert names metrics and labels that the
// binaries really export (a fleet-mode agent included).
func TestDashboardQueriesMatchExportedMetrics(t *testing.T) {
	e := testutil.StartBrokerEnv(t, bin, 3)
	if a := e.Token(t, "upstream=corp&audience=api"); a.Status != http.StatusOK {
		t.Fatalf("token: %+v", a)
	}
	if a := e.Token(t, "upstream=assert-other"); a.Status < 400 {
		t.Fatalf("a client assertion for another client id was accepted: %+v", a)
	}
	var cfg struct {
		AdminListen string `yaml:"admin_listen"`
		SocketPath  string `yaml:"socket_path"`
	}
	b, err := os.ReadFile(e.AgentConfig)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	// A Workload API stream of the test's own (the broker's entry matches
	// this binary run by this uid).
	if _, errOut, code := testutil.Run(t, bin, nil, "fetch", "x509", "--socket", cfg.SocketPath); code != 0 {
		t.Fatalf("fetch x509: %s", errOut)
	}

	// Wait for one background refresh (3 s tokens, 1 s safety margin) so the
	// refresh counter has a series.
	var have exported
	deadline := time.Now().Add(20 * time.Second)
	for {
		have = exported{}
		scrapeFamilies(t, "http://"+cfg.AdminListen+"/metrics", have)
		scrapeFamilies(t, e.MetricsURL, have)
		if have["nodeward_broker_refreshes_total"] != nil && have["nodeward_broker_upstream_errors_total"] != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no broker refresh or upstream error series within 20s; broker log:\n%s", e.Broker.Log())
		}
		time.Sleep(200 * time.Millisecond)
	}

	// A fleet-mode agent (joined to a real spire-server) exports the
	// server sync metrics the fleet alerts use.
	s := spire.Start(t, spire.Options{TrustDomain: "dash.test"})
	fleet := startFleetNode(t, s, "dash")
	scrapeFamilies(t, "http://"+fleet.admin+"/metrics", have)

	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	var rf struct {
		Groups []struct {
			Rules []struct {
				Record string `yaml:"record"`
				Alert  string `yaml:"alert"`
				Expr   string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	rb, err := os.ReadFile(filepath.Join(root, "packaging", "prometheus", "nodeward.rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(rb, &rf); err != nil {
		t.Fatal(err)
	}
	rules := map[string]string{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				rules[r.Record] = r.Expr
			}
		}
	}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			checkQuery(t, "rule "+r.Record+r.Alert, r.Expr, have, rules, 0)
		}
	}

	db, err := os.ReadFile(filepath.Join(root, "packaging", "grafana", "nodeward-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			GridPos struct {
				X, W int
			} `json:"gridPos"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(db, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	queries, rows := 0, map[string]bool{}
	for _, p := range dash.Panels {
		if p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: x %d + w %d is beyond Grafana's 24 columns", p.Title, p.GridPos.X, p.GridPos.W)
		}
		if p.Type == "row" {
			rows[strings.ToLower(strings.Fields(p.Title)[0])] = true
		}
		for _, q := range p.Targets {
			queries++
			checkQuery(t, "panel "+p.Title, q.Expr, have, rules, 0)
		}
	}
	for _, r := range []string{"executive:", "on-call:", "debug:"} {
		if !rows[r] {
			var got []string
			for k := range rows {
				got = append(got, k)
			}
			sort.Strings(got)
			t.Errorf("dashboard has no %q row (rows: %v)", r, got)
		}
	}
	if queries < 20 {
		t.Errorf("dashboard has %d queries; did it parse?", queries)
	}
}
