package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadExample(t *testing.T) {
	cfg, err := Load("testdata/agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TrustDomain != "example.org" || cfg.AdminListen != "127.0.0.1:9464" || cfg.SocketPath != "/run/nodeward/workload.sock" {
		t.Fatalf("cfg = %+v", cfg)
	}
	if len(cfg.Entries) != 2 {
		t.Fatalf("entries = %d, want 2 (one inline, one from entries_file)", len(cfg.Entries))
	}
	web, batch := cfg.Entries[0], cfg.Entries[1]
	if web.ParsedID.String() != "spiffe://example.org/web" || len(web.ParsedSelectors) != 2 ||
		time.Duration(web.X509TTL) != time.Hour || time.Duration(web.JWTTTL) != 5*time.Minute || web.Hint != "web" {
		t.Errorf("web = %+v", web)
	}
	if batch.ID != "batch-1" || time.Duration(batch.X509TTL) != DefaultX509TTL || batch.Pos != "testdata/entries.yaml:2" {
		t.Errorf("batch = %+v", batch)
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want string
	}{
		{"unknown top key", "trust_domain: example.org\ntrust_domian: x\n", `agent.yaml:2: unknown key "trust_domian"`},
		{"unknown entry key", "entries:\n  - spiffe_id: spiffe://nodeward.local/a\n    selectors: [unix:uid:1]\n    ttl: 1h\n", `agent.yaml:4: unknown key "ttl" in entries[0]`},
		{"bad selector", "entries:\n  - spiffe_id: spiffe://nodeward.local/a\n    selectors: [unix:uid:1, unix:uid]\n", `agent.yaml:3: entries[0].selectors[1]: invalid selector "unix:uid"`},
		{"bad duration", "entries:\n  - spiffe_id: spiffe://nodeward.local/a\n    selectors: [unix:uid:1]\n  - spiffe_id: spiffe://nodeward.local/b\n    selectors: [unix:uid:1]\n    x509_ttl: 1 hour\n", `agent.yaml:6: entries[1].x509_ttl: invalid duration "1 hour"`},
		{"bare integer duration", "entries:\n  - spiffe_id: spiffe://nodeward.local/a\n    selectors: [unix:uid:1]\n    jwt_ttl: 300\n", `agent.yaml:4: entries[0].jwt_ttl: invalid duration "300": give a unit`},
		{"ttl too long", "entries:\n  - spiffe_id: spiffe://nodeward.local/a\n    selectors: [unix:uid:1]\n    x509_ttl: 9000h\n", `agent.yaml:4: entries[0].x509_ttl: duration 9000h out of range`},
		{"zero ttl", "entries:\n  - spiffe_id: spiffe://nodeward.local/a\n    selectors: [unix:uid:1]\n    x509_ttl: 0s\n", `agent.yaml:4: entries[0].x509_ttl: duration 0s out of range`},
		{"bad trust domain", "trust_domain: Example.ORG!\n", `agent.yaml:1: trust_domain: invalid trust domain "Example.ORG!"`},
		{"map for list", "entries:\n  spiffe_id: x\n", `agent.yaml:2: entries: want a list of entries`},
		{"list for string", "trust_domain: [a]\n", `agent.yaml:1: trust_domain: want a string`},
		{"duplicate key", "trust_domain: a.org\ntrust_domain: b.org\n", `agent.yaml:2: duplicate key "trust_domain"`},
		{"two documents", "trust_domain: a.org\n---\ntrust_domain: b.org\n", `agent.yaml:2: more than one YAML document`},
		{"foreign id", "entries:\n  - spiffe_id: spiffe://other.org/a\n    selectors: [unix:uid:1]\n", `agent.yaml:2: entries[0].spiffe_id: "spiffe://other.org/a" is outside trust domain nodeward.local`},
		{"root id", "entries:\n  - spiffe_id: spiffe://nodeward.local\n    selectors: [unix:uid:1]\n", `agent.yaml:2: entries[0].spiffe_id: "spiffe://nodeward.local" has no path`},
		{"unparseable id", "entries:\n  - spiffe_id: http://x/y\n    selectors: [unix:uid:1]\n", `agent.yaml:2: entries[0].spiffe_id: invalid SPIFFE ID "http://x/y"`},
		{"missing id", "entries:\n  - selectors: [unix:uid:1]\n", `agent.yaml:2: entries[0]: spiffe_id is required`},
		{"no selectors", "entries:\n  - spiffe_id: spiffe://nodeward.local/a\n    selectors: []\n", `agent.yaml:3: entries[0].selectors: at least one selector is required`},
		{"selectors missing", "entries:\n  - spiffe_id: spiffe://nodeward.local/a\n", `agent.yaml:2: entries[0].selectors: at least one selector is required`},
		{"bad dns", "entries:\n  - spiffe_id: spiffe://nodeward.local/a\n    selectors: [unix:uid:1]\n    dns_names: [ok.example, -bad]\n", `agent.yaml:4: entries[0].dns_names[1]: invalid DNS name "-bad"`},
		{"audit_log relative", "audit_log: audit.log\n", `agent.yaml:1: audit_log: want stdout, stderr, off or an absolute file path`},
		{"max_procs negative", "max_procs: -2\n", `agent.yaml:1: max_procs: want an integer`},
		{"max_procs string", "max_procs: many\n", `agent.yaml:1: max_procs: want an integer`},
		{"log level", "log_level: loud\n", `agent.yaml:1: log_level: unknown level "loud"`},
		{"relative socket", "socket_path: run/x.sock\n", `agent.yaml:1: socket_path: must be an absolute path`},
		{"syntax", "trust_domain: [\n", `agent.yaml:1: did not find expected node content`},
		{"scalar top", "just text\n", `agent.yaml:1: the top level must be a mapping`},
		{"missing entries file", "entries_file: nope.yaml\n", `agent.yaml: entries_file:`},
	}
	for _, tt := range tests {
		_, err := Parse("agent.yaml", []byte(tt.yaml))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v\n  want it to contain %q", tt.name, err, tt.want)
		}
	}
}

func TestEmptyIsDefault(t *testing.T) {
	for _, data := range []string{"", "\n", "# only a comment\n", "~\n"} {
		cfg, err := Parse("agent.yaml", []byte(data))
		if err != nil {
			t.Fatalf("%q: %v", data, err)
		}
		if cfg.TrustDomain != DefaultTrustDomain || len(cfg.Entries) != 0 || cfg.AdminListen != "" {
			t.Fatalf("%q: %+v", data, cfg)
		}
	}
}

func TestEntriesFileRelativeAndErrors(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "e.yaml"), []byte("entries:\n  - spiffe_id: spiffe://example.org/x\n    selectors: [bogus]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Parse(filepath.Join(dir, "agent.yaml"), []byte("trust_domain: example.org\nentries_file: e.yaml\n"))
	want := filepath.Join(dir, "e.yaml") + ":3: entries[0].selectors[0]"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want %q", err, want)
	}
	entries, err := LoadEntries("testdata/entries.yaml")
	if err != nil || len(entries) != 1 {
		t.Fatalf("LoadEntries: %v %v", entries, err)
	}
}

func TestDefaults(t *testing.T) {
	d := Default()
	if d.TrustDomain != "nodeward.local" || d.LogLevel != "info" || len(d.Entries) != 0 {
		t.Fatalf("%+v", d)
	}
	if os.Geteuid() == 0 {
		if d.SocketPath != "/run/nodeward/workload.sock" || d.DataDir != "/var/lib/nodeward" {
			t.Fatalf("root defaults: %s %s", d.SocketPath, d.DataDir)
		}
	}
	if !filepath.IsAbs(DefaultSocketPath()) {
		t.Fatal("default socket path not absolute")
	}
}

func TestTooLarge(t *testing.T) {
	if _, err := Parse("big.yaml", make([]byte, MaxFileSize+1)); err == nil {
		t.Fatal("oversized config accepted")
	}
}

func FuzzParse(f *testing.F) {
	seed, _ := os.ReadFile("testdata/agent.yaml")
	f.Add(seed)
	f.Add([]byte("entries:\n  - spiffe_id: spiffe://nodeward.local/a\n    selectors: [unix:uid:1]\n"))
	f.Add([]byte("trust_domain: [\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("/nonexistent/fuzz.yaml", data)
		if err != nil {
			return
		}
		for _, e := range cfg.Entries {
			if e.ParsedID.IsZero() || len(e.ParsedSelectors) == 0 || len(e.ParsedSelectors) != len(e.Selectors) {
				t.Fatalf("accepted an entry without parsed ID or selectors: %+v", e)
			}
		}
	})
}

func TestOwnerExpiresGuardrails(t *testing.T) {
	cfg, err := Parse("agent.yaml", []byte(`guardrails:
  max_x509_ttl: 24h
  max_jwt_ttl: 10m
  require_owner: true
  require_expires: false
entries:
  - spiffe_id: spiffe://nodeward.local/a
    selectors: [unix:uid:1]
    owner: team-a
    expires: 2027-03-01
  - spiffe_id: spiffe://nodeward.local/b
    selectors: [unix:uid:2]
    expires: 2027-03-01T12:00:00Z
`))
	if err != nil {
		t.Fatal(err)
	}
	g := cfg.Guardrails
	if time.Duration(g.MaxX509TTL) != 24*time.Hour || time.Duration(g.MaxJWTTTL) != 10*time.Minute || !g.RequireOwner || g.RequireExpires {
		t.Errorf("guardrails = %+v", g)
	}
	a, b := cfg.Entries[0], cfg.Entries[1]
	if a.Owner != "team-a" || !a.Expires.Equal(time.Date(2027, 3, 1, 0, 0, 0, 0, time.UTC)) || !b.Expires.Equal(time.Date(2027, 3, 1, 12, 0, 0, 0, time.UTC)) {
		t.Errorf("entries = %+v %+v", a, b)
	}
	if d := DefaultGuardrails(); time.Duration(d.MaxX509TTL) != 720*time.Hour {
		t.Errorf("default guardrails = %+v", d)
	}
	for in, want := range map[string]string{
		"entries:\n  - spiffe_id: spiffe://nodeward.local/a\n    selectors: [unix:uid:1]\n    expires: next week\n": `agent.yaml:4: entries[0].expires: invalid date "next week"`,
		"guardrails:\n  require_owner: yes please\n":                                                                `agent.yaml:2: guardrails.require_owner: want true or false`,
		"guardrails:\n  max_ttl: 1h\n":                                                                              `agent.yaml:2: unknown key "max_ttl" in guardrails`,
	} {
		if _, err := Parse("agent.yaml", []byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want %q", err, want)
		}
	}
}
