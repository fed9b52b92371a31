package packaging_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestPrometheusRules runs the real promtool over the SLO pack: the rules
// parse, and every unit test in nodeward.test.yml passes.
func TestPrometheusRules(t *testing.T) {
	need(t, "promtool")
	dir := filepath.Join(root(t), "packaging", "prometheus")
	for _, args := range [][]string{
		{"check", "rules", "nodeward.rules.yml"},
		{"test", "rules", "nodeward.test.yml"},
	} {
		cmd := exec.Command("promtool", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

type ruleFile struct {
	Groups []struct {
		Rules []struct {
			Alert  string `yaml:"alert"`
			Record string `yaml:"record"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

type ruleTests struct {
	Tests []struct {
		AlertRuleTest []struct {
			AlertName string `yaml:"alertname"`
			ExpAlerts []any  `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

// TestPrometheusAlertsCovered holds the pack to its promise: every alert has
// a unit test in which it fires and one in which it stays silent, and a
// runbook entry in docs/operating.md whose heading is the alert's name.
func TestPrometheusAlertsCovered(t *testing.T) {
	dir := filepath.Join(root(t), "packaging", "prometheus")
	var rules ruleFile
	readYAML(t, filepath.Join(dir, "nodeward.rules.yml"), &rules)
	var tests ruleTests
	readYAML(t, filepath.Join(dir, "nodeward.test.yml"), &tests)
	runbook, err := os.ReadFile(filepath.Join(root(t), "docs", "operating.md"))
	if err != nil {
		t.Fatal(err)
	}
	fires, silent := map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.AlertName] = true
			} else {
				silent[a.AlertName] = true
			}
		}
	}
	alerts := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			if !fires[r.Alert] {
				t.Errorf("alert %s: no unit test in which it fires", r.Alert)
			}
			if !silent[r.Alert] {
				t.Errorf("alert %s: no unit test in which it stays silent", r.Alert)
			}
			if !regexp.MustCompile(`(?m)^#+ ` + regexp.QuoteMeta(r.Alert) + `$`).Match(runbook) {
				t.Errorf("alert %s: no runbook heading in docs/operating.md", r.Alert)
			}
		}
	}
	if alerts < 10 {
		t.Fatalf("found %d alerts in nodeward.rules.yml; the file did not parse as expected", alerts)
	}
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
