package config

import (
	"errors"
	"io/fs"
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
	if cfg.TrustDomain != "example.org" || cfg.SocketPath != "/run/nodeward/workload.sock" || cfg.DataDir != "/var/lib/nodeward" ||
		cfg.AdminListen != "127.0.0.1:9464" || cfg.LogLevel != "info" || cfg.EntriesFile != "entries.yaml" || cfg.Source != "testdata/agent.yaml" {
		t.Fatalf("cfg = %+v", cfg)
	}
	if len(cfg.Entries) != 2 {
		t.Fatalf("entries = %d, want 2 (one inline, one from entries_file)", len(cfg.Entries))
	}
	web, batch := cfg.Entries[0], cfg.Entries[1]
	if web.ID != "web-1" || web.ParsedID.String() != "spiffe://example.org/web" ||
		strings.Join(web.Selectors, ",") != "unix:uid:1000,systemd:unit:web.service" ||
		len(web.ParsedSelectors) != 2 || web.ParsedSelectors[1].String() != "systemd:unit:web.service" ||
		time.Duration(web.X509TTL) != time.Hour || time.Duration(web.JWTTTL) != 5*time.Minute ||
		strings.Join(web.DNSNames, ",") != "web.internal" || web.Hint != "web" || web.Pos != "testdata/agent.yaml:10" {
		t.Errorf("web = %+v", web)
	}
	if batch.ID != "batch-1" || batch.ParsedID.String() != "spiffe://example.org/batch" || len(batch.ParsedSelectors) != 2 ||
		time.Duration(batch.X509TTL) != DefaultX509TTL || time.Duration(batch.JWTTTL) != DefaultJWTTTL || batch.Pos != "testdata/entries.yaml:2" {
		t.Errorf("batch = %+v", batch)
	}
}

func TestEmptyIsDefault(t *testing.T) {
	for _, data := range []string{"", "\n", "# only a comment\n", "~\n", "---\n", "---\n# comment\n"} {
		cfg, err := Parse("agent.yaml", []byte(data))
		if err != nil {
			t.Fatalf("%q: %v", data, err)
		}
		want := Default()
		want.Source = "agent.yaml"
		if cfg.TrustDomain != want.TrustDomain || cfg.SocketPath != want.SocketPath || cfg.DataDir != want.DataDir ||
			cfg.AdminListen != "" || cfg.LogLevel != "info" || len(cfg.Entries) != 0 || cfg.Source != "agent.yaml" {
			t.Fatalf("%q: %+v", data, cfg)
		}
	}
}

func TestAcceptedValues(t *testing.T) {
	cfg, err := Parse("agent.yaml", []byte(`admin_listen: ""
log_level: debug
entries:
  - spiffe_id: spiffe://nodeward.local/a
    selectors: [unix:uid:1]
    x509_ttl: 8760h
    jwt_ttl: 5m30s
    dns_names: ["*.svc.internal", localhost, a-b.example]
  - spiffe_id: spiffe://nodeward.local/b
    selectors: [unix:uid:2]
    dns_names: ~
`))
	if err != nil {
		t.Fatal(err)
	}
	a, b := cfg.Entries[0], cfg.Entries[1]
	if cfg.AdminListen != "" || cfg.LogLevel != "debug" || time.Duration(a.X509TTL) != MaxTTL ||
		time.Duration(a.JWTTTL) != 5*time.Minute+30*time.Second || len(a.DNSNames) != 3 || len(b.DNSNames) != 0 {
		t.Fatalf("cfg = %+v", cfg)
	}
}

func TestDefault(t *testing.T) {
	d := Default()
	if d.TrustDomain != "nodeward.local" || d.SocketPath != DefaultSocketPath() || d.DataDir != DefaultDataDir() ||
		d.AdminListen != "" || d.LogLevel != "info" || len(d.Entries) != 0 || d.EntriesFile != "" || d.Source != "" {
		t.Fatalf("Default() = %+v", d)
	}
	if os.Geteuid() == 0 && (DefaultSocketPath() != "/run/nodeward/workload.sock" || DefaultDataDir() != "/var/lib/nodeward") {
		t.Fatalf("as root: socket %s, data dir %s", DefaultSocketPath(), DefaultDataDir())
	}
}

func TestDefaultPaths(t *testing.T) {
	env := func(kv ...string) func(string) string {
		return func(k string) string {
			for i := 0; i+1 < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1]
				}
			}
			return ""
		}
	}
	tmp := os.TempDir()
	tests := []struct {
		name         string
		euid         int
		getenv       func(string) string
		sock, stateD string
	}{
		{"root ignores env", 0, env("XDG_RUNTIME_DIR", "/run/user/0", "XDG_STATE_HOME", "/s", "HOME", "/root"), "/run/nodeward/workload.sock", "/var/lib/nodeward"},
		{"xdg", 1000, env("XDG_RUNTIME_DIR", "/run/user/1000", "XDG_STATE_HOME", "/home/u/.st", "HOME", "/home/u"), "/run/user/1000/nodeward/workload.sock", "/home/u/.st/nodeward"},
		{"home only", 1000, env("HOME", "/home/u"), filepath.Join(tmp, "nodeward-1000", "workload.sock"), "/home/u/.local/state/nodeward"},
		{"relative xdg ignored", 1000, env("XDG_RUNTIME_DIR", "run", "XDG_STATE_HOME", "st", "HOME", "/home/u"), filepath.Join(tmp, "nodeward-1000", "workload.sock"), "/home/u/.local/state/nodeward"},
		{"nothing", 42, env(), filepath.Join(tmp, "nodeward-42", "workload.sock"), filepath.Join(tmp, "nodeward-42-state")},
	}
	for _, tt := range tests {
		if got := defaultSocketPath(tt.euid, tt.getenv); got != tt.sock {
			t.Errorf("%s: socket = %s, want %s", tt.name, got, tt.sock)
		}
		if got := defaultDataDir(tt.euid, tt.getenv); got != tt.stateD {
			t.Errorf("%s: data dir = %s, want %s", tt.name, got, tt.stateD)
		}
	}
}

func TestEntriesFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("conf.d/more.yaml", "entries:\n  - spiffe_id: spiffe://example.org/more\n    selectors: [unix:uid:2]\n")
	write("bad-sel.yaml", "entries:\n  - spiffe_id: spiffe://example.org/x\n    selectors:\n      - bogus\n")
	write("foreign.yaml", "entries:\n  - spiffe_id: spiffe://other.org/x\n    selectors: [unix:uid:1]\n")
	write("dup.yaml", "entries:\n  - id: one\n    spiffe_id: spiffe://example.org/y\n    selectors: [unix:uid:1]\n")
	write("full.yaml", "trust_domain: example.org\nentries: []\n")
	inline := "trust_domain: example.org\nentries:\n  - id: one\n    spiffe_id: spiffe://example.org/inline\n    selectors: [unix:uid:1]\n"

	// A relative entries_file is relative to the config file's directory,
	// and the entries of both are used, inline first.
	cfg, err := Load(write("agent.yaml", inline+"entries_file: conf.d/more.yaml\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Entries) != 2 || cfg.Entries[0].ParsedID.Path() != "/inline" || cfg.Entries[1].ParsedID.Path() != "/more" ||
		cfg.Entries[1].Pos != filepath.Join(dir, "conf.d/more.yaml")+":2" {
		t.Fatalf("entries = %+v", cfg.Entries)
	}
	// An absolute one is used as is.
	cfg, err = Parse("/elsewhere/agent.yaml", []byte("trust_domain: example.org\nentries_file: "+filepath.Join(dir, "conf.d/more.yaml")+"\n"))
	if err != nil || len(cfg.Entries) != 1 {
		t.Fatalf("absolute entries_file: %v, %v", cfg, err)
	}

	tests := []struct {
		name, file, want string
		is               error
	}{
		{"bad selector", "bad-sel.yaml", filepath.Join(dir, "bad-sel.yaml") + `:4: entries[0].selectors[0]: invalid selector "bogus": want type:key:value`, ErrInvalid},
		{"foreign trust domain", "foreign.yaml", filepath.Join(dir, "foreign.yaml") + `:2: entries[0].spiffe_id: "spiffe://other.org/x" is outside trust domain example.org`, ErrInvalid},
		{"duplicate id across files", "dup.yaml", filepath.Join(dir, "dup.yaml") + `:2: entries[0].id: duplicate id "one" (first at ` + filepath.Join(dir, "agent.yaml") + `:3)`, ErrInvalid},
		{"only entries allowed", "full.yaml", filepath.Join(dir, "full.yaml") + `:1: unknown key "trust_domain"`, ErrUnknownKey},
		{"missing", "nope.yaml", filepath.Join(dir, "agent.yaml") + `:6: entries_file: open ` + filepath.Join(dir, "nope.yaml") + `: no such file or directory`, fs.ErrNotExist},
	}
	for _, tt := range tests {
		_, err := Load(write("agent.yaml", inline+"entries_file: "+tt.file+"\n"))
		if err == nil || err.Error() != tt.want || !errors.Is(err, tt.is) || !errors.Is(err, ErrInvalid) {
			t.Errorf("%s:\n got %v\nwant %s (is %v)", tt.name, err, tt.want, tt.is)
		}
	}
}

func TestLoadEntries(t *testing.T) {
	entries, err := LoadEntries("testdata/entries.yaml")
	if err != nil || len(entries) != 1 || entries[0].ID != "batch-1" || entries[0].Pos != "testdata/entries.yaml:2" {
		t.Fatalf("LoadEntries: %+v, %v", entries, err)
	}
	// No trust domain to check against: any is fine.
	p := filepath.Join(t.TempDir(), "e.yaml")
	if err := os.WriteFile(p, []byte("entries:\n  - spiffe_id: spiffe://other.org/x\n    selectors: [unix:uid:1]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if entries, err := LoadEntries(p); err != nil || entries[0].ParsedID.TrustDomain().Name() != "other.org" {
		t.Fatalf("LoadEntries(other.org): %+v, %v", entries, err)
	}
	// A whole agent config is not an entries file, and says so with ErrUnknownKey.
	_, err = LoadEntries("testdata/agent.yaml")
	if want := `testdata/agent.yaml:4: unknown key "trust_domain"`; err == nil || err.Error() != want || !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("LoadEntries(agent.yaml) = %v, want %s", err, want)
	}
	if _, err := LoadEntries(filepath.Join(t.TempDir(), "missing.yaml")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func TestFileSize(t *testing.T) {
	dir := t.TempDir()
	// Exactly MaxFileSize is accepted (a comment), one byte more is not.
	ok := append([]byte("#"), []byte(strings.Repeat(" ", MaxFileSize-2)+"\n")...)
	if _, err := Parse("ok.yaml", ok); err != nil {
		t.Fatalf("file of MaxFileSize bytes: %v", err)
	}
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, append(ok, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); err == nil || !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), big+": file too large: over 4194304 bytes") {
		t.Fatalf("Load(big) = %v", err)
	}
	if _, err := Parse("big.yaml", append(ok, '\n')); err == nil || err.Error() != "big.yaml: file too large: over 4194304 bytes" || !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Parse(big) = %v", err)
	}
	// A big entries_file is refused with the config's position.
	if err := os.WriteFile(filepath.Join(dir, "agent.yaml"), []byte("entries_file: big.yaml\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(filepath.Join(dir, "agent.yaml")); err == nil || !errors.Is(err, ErrTooLarge) ||
		err.Error() != filepath.Join(dir, "agent.yaml")+":1: entries_file: "+big+": file too large: over 4194304 bytes" {
		t.Fatalf("big entries_file: %v", err)
	}
}

func TestLoadMissing(t *testing.T) {
	p := filepath.Join(t.TempDir(), "agent.yaml")
	_, err := Load(p)
	if err == nil || !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), p) {
		t.Fatalf("Load(missing) = %v", err)
	}
}

func TestOwnerExpiresGuardrails(t *testing.T) {
	cfg, err := Parse("agent.yaml", []byte(`guardrails:
  max_x509_ttl: 24h
  max_jwt_ttl: 10m
  require_owner: True
  require_expires: false
  stale_after: 14d
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
	if time.Duration(g.MaxX509TTL) != 24*time.Hour || time.Duration(g.MaxJWTTTL) != 10*time.Minute || !g.RequireOwner || g.RequireExpires || time.Duration(g.StaleAfter) != 14*24*time.Hour {
		t.Errorf("guardrails = %+v", g)
	}
	a, b := cfg.Entries[0], cfg.Entries[1]
	if a.Owner != "team-a" || !a.Expires.Equal(time.Date(2027, 3, 1, 0, 0, 0, 0, time.UTC)) || !b.Expires.Equal(time.Date(2027, 3, 1, 12, 0, 0, 0, time.UTC)) {
		t.Errorf("entries = %+v %+v", a, b)
	}
	if d := DefaultGuardrails(); time.Duration(d.MaxX509TTL) != 720*time.Hour || time.Duration(d.MaxJWTTTL) != 24*time.Hour || time.Duration(d.StaleAfter) != 30*24*time.Hour {
		t.Errorf("default guardrails = %+v", d)
	}
}

func TestLimits(t *testing.T) {
	cfg, err := Parse("agent.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Limits != DefaultLimits() {
		t.Fatalf("default limits = %+v", cfg.Limits)
	}
	cfg, err = Parse("agent.yaml", []byte(`limits:
  max_conns: 10
  max_conns_per_uid: 2
  max_streams: 20
  max_streams_per_conn: 3
  max_streams_per_uid: 4
  idle_timeout: 30s
  rate: 0
  burst: 5
  jwt_cache_bytes: 1MiB
`))
	if err != nil {
		t.Fatal(err)
	}
	want := Limits{MaxConns: 10, MaxConnsPerUID: 2, MaxStreams: 20, MaxStreamsPerConn: 3, MaxStreamsPerUID: 4,
		IdleTimeout: Duration(30 * time.Second), Rate: 0, Burst: 5, JWTCacheBytes: 1 << 20}
	if cfg.Limits != want {
		t.Fatalf("limits = %+v, want %+v", cfg.Limits, want)
	}
	cfg, err = Parse("agent.yaml", []byte("limits:\n  rate: 2.5\n  jwt_cache_bytes: 65536\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Limits.Rate != 2.5 || cfg.Limits.JWTCacheBytes != 64<<10 || cfg.Limits.MaxConns != 1024 {
		t.Fatalf("limits = %+v", cfg.Limits)
	}
}

func TestEnvironmentKey(t *testing.T) {
	cfg, err := Parse("agent.yaml", []byte("trust_domain: example.org\nenvironment: production\n"))
	if err != nil || cfg.Environment != "production" {
		t.Fatalf("environment: production: %v %v", cfg, err)
	}
	if _, err := Parse("agent.yaml", []byte("trust_domain: example.org\nenvironment: Prod Env\n")); err == nil ||
		!strings.Contains(err.Error(), "agent.yaml:2") || !strings.Contains(err.Error(), "environment") {
		t.Fatalf("bad environment: %v", err)
	}
}
