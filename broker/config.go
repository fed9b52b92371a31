package broker

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/nodeward/nodeward/sinks"
)

// Config is the broker's configuration (`nodeward broker --config FILE`).
// The YAML key names are a user contract.
type Config struct {
	WorkloadSocket string         `yaml:"workload_socket"`
	Listen         string         `yaml:"listen"`
	ListenTCP      string         `yaml:"listen_tcp"`
	AllowUIDs      []uint32       `yaml:"allow_uids"`
	AllowGIDs      []uint32       `yaml:"allow_gids"`
	Upstreams      []UpstreamFile `yaml:"upstreams"`
	Cache          CacheFile      `yaml:"cache"`
	Breaker        BreakerFile    `yaml:"breaker"`
	Sinks          []SinkFile     `yaml:"sinks"`
	// SVIDFiles write the broker's own SVIDs and bundles to files for the
	// service next to it (spiffe-helper built in).
	SVIDFiles     []sinks.SVIDFiles `yaml:"svid_files"`
	MetricsListen string            `yaml:"metrics_listen"` // loopback address for /metrics; empty: none
	// MetricsListenPublic allows a non-loopback metrics_listen (it serves
	// /v1/status, which names the broker's identity and upstreams).
	MetricsListenPublic bool       `yaml:"metrics_listen_public"`
	LogLevel            string     `yaml:"log_level"`
	AuditLog            string     `yaml:"audit_log"` // stdout (default), stderr, off or a file path
	Limits              LimitsFile `yaml:"limits"`
	// Environment names the node's environment; "production" makes the
	// broker refuse a game day's forced outage unless the request
	// confirms it explicitly.
	Environment string `yaml:"environment"`

	clock func() time.Time // tests: the wall clock of every expiry decision
}

// LimitsFile is the limits section: what one caller uid may make the broker
// ask of the IdPs.
type LimitsFile struct {
	UpstreamCallsPerSecond float64 `yaml:"upstream_calls_per_second"`
	Burst                  int     `yaml:"burst"`
	KeysPerCaller          int     `yaml:"keys_per_caller"`
}

// UpstreamFile is one upstream as configured.
type UpstreamFile struct {
	Name          string   `yaml:"name"`
	TokenEndpoint string   `yaml:"token_endpoint"`
	Grant         string   `yaml:"grant"`
	ClientID      string   `yaml:"client_id"`
	SVIDAudience  string   `yaml:"svid_audience"`
	Scopes        []string `yaml:"scopes"`
	CAFile        string   `yaml:"ca_file"`
	Timeout       Duration `yaml:"timeout"`
	// TokenTypes are the token_type values accepted from the IdP
	// (case-insensitive); default [Bearer].
	TokenTypes []string `yaml:"token_types"`
}

// CacheFile is the cache section.
type CacheFile struct {
	MaxEntries    int       `yaml:"max_entries"`
	RefreshWindow []float64 `yaml:"refresh_window"`
	IdleTimeout   Duration  `yaml:"idle_timeout"`
	SafetyMargin  Duration  `yaml:"safety_margin"`
}

// BreakerFile is the breaker section.
type BreakerFile struct {
	ConsecutiveFailures uint32   `yaml:"consecutive_failures"`
	OpenTimeout         Duration `yaml:"open_timeout"`
	MaxRetryAfter       Duration `yaml:"max_retry_after"` // cap of an IdP's Retry-After; default 60s
}

// Duration is a time.Duration written as "30s" in YAML.
type Duration time.Duration

// UnmarshalYAML parses "30s"; bare numbers are refused.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Tag == "!!int" || n.Tag == "!!float" {
		return fmt.Errorf("line %d: invalid duration %q: give a unit, such as 30s", n.Line, n.Value)
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil || v < 0 {
		return fmt.Errorf("line %d: invalid duration %q", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// DefaultBrokerSocket is where the broker listens by default.
const DefaultBrokerSocket = "/run/nodeward/broker.sock"

// envName is an environment value: empty, or a short lowercase name.
var envName = regexp.MustCompile(`^([a-z][a-z0-9-]{0,31})?$`)

// Production reports whether the config marks this node production.
func (c *Config) Production() bool { return c.Environment == "production" }

var lineErr = regexp.MustCompile(`^line (\d+): (.*)$`)
var unknownField = regexp.MustCompile(`^field (\S+) not found in type \S+$`)

// LoadConfig reads and validates a broker config file.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("broker config: %w", err)
	}
	return ParseConfig(path, data)
}

// ParseConfig decodes strictly: an unknown key or a bad value is an error
// that names the file, the line and the key.
func ParseConfig(name string, data []byte) (*Config, error) {
	if len(data) > 4<<20 {
		return nil, fmt.Errorf("%s: larger than 4 MiB", name)
	}
	cfg := &Config{Listen: DefaultBrokerSocket, WorkloadSocket: "unix:///run/nodeward/workload.sock", LogLevel: "info", AuditLog: "stdout"}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && err.Error() != "EOF" {
		return nil, rewriteYAMLError(name, err)
	}
	var root yaml.Node
	_ = yaml.Unmarshal(data, &root)
	if err := cfg.validate(name, &root); err != nil {
		return nil, err
	}
	return cfg, nil
}

// rewriteYAMLError turns yaml.v3's messages into FILE:LINE: message.
func rewriteYAMLError(name string, err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msg := te.Errors[0]
		if m := lineErr.FindStringSubmatch(msg); m != nil {
			if u := unknownField.FindStringSubmatch(m[2]); u != nil {
				return fmt.Errorf("%s:%s: unknown key %q", name, m[1], u[1])
			}
			return fmt.Errorf("%s:%s: %s", name, m[1], m[2])
		}
		return fmt.Errorf("%s: %s", name, msg)
	}
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if m := lineErr.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("%s:%s: %s", name, m[1], m[2])
	}
	return fmt.Errorf("%s: %s", name, msg)
}

// lineOf finds the line of a key path such as "upstreams", 0, "grant".
func lineOf(root *yaml.Node, path ...any) int {
	n := root
	if n != nil && n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := 0
	for _, p := range path {
		if n == nil {
			return line
		}
		switch k := p.(type) {
		case string:
			var next *yaml.Node
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == k {
					line, next = n.Content[i].Line, n.Content[i+1]
				}
			}
			n = next
		case int:
			if n.Kind != yaml.SequenceNode || k >= len(n.Content) {
				return line
			}
			n = n.Content[k]
			line = n.Line
		}
	}
	return line
}

func (c *Config) validate(name string, root *yaml.Node) error {
	bad := func(line int, field, format string, args ...any) error {
		return fmt.Errorf("%s:%d: %s: %s", name, line, field, fmt.Sprintf(format, args...))
	}
	if c.Listen == "" && c.ListenTCP == "" {
		return bad(lineOf(root, "listen"), "listen", "set listen (a Unix socket path) or listen_tcp")
	}
	if c.Listen != "" && !filepath.IsAbs(c.Listen) {
		return bad(lineOf(root, "listen"), "listen", "must be an absolute socket path, got %q", c.Listen)
	}
	if c.ListenTCP != "" {
		host, _, err := net.SplitHostPort(c.ListenTCP)
		ip := net.ParseIP(host)
		if err != nil || ip == nil || !ip.IsLoopback() {
			return bad(lineOf(root, "listen_tcp"), "listen_tcp", "must be a loopback address such as 127.0.0.1:8181, got %q", c.ListenTCP)
		}
	}
	if c.MetricsListen != "" {
		host, _, err := net.SplitHostPort(c.MetricsListen)
		ip := net.ParseIP(host)
		if err != nil || ip == nil {
			return bad(lineOf(root, "metrics_listen"), "metrics_listen", "want host:port, got %q", c.MetricsListen)
		}
		if !ip.IsLoopback() && !c.MetricsListenPublic {
			return bad(lineOf(root, "metrics_listen"), "metrics_listen", "%q is not a loopback address: /v1/status there names the broker's identity and upstreams; set metrics_listen_public: true to serve it anyway", c.MetricsListen)
		}
	}
	if l := c.Limits; l.UpstreamCallsPerSecond < 0 || l.Burst < 0 || l.KeysPerCaller < 0 {
		key := "upstream_calls_per_second"
		switch {
		case l.Burst < 0:
			key = "burst"
		case l.KeysPerCaller < 0:
			key = "keys_per_caller"
		}
		return bad(lineOf(root, "limits", key), "limits."+key, "must not be negative")
	}
	if len(c.Upstreams) == 0 && len(c.SVIDFiles) == 0 {
		return bad(lineOf(root, "upstreams"), "upstreams", "at least one upstream (or svid_files entry) is required")
	}
	for i, sf := range c.SVIDFiles {
		if err := sf.Validate(); err != nil {
			path, field := fieldPath(err, []any{"svid_files", i}, "svid_files["+strconv.Itoa(i)+"]")
			return bad(lineOf(root, path...), field, "%v", err)
		}
	}
	seen := map[string]bool{}
	for i, u := range c.Upstreams {
		field := "upstreams[" + strconv.Itoa(i) + "]"
		if u.Name == "" {
			return bad(lineOf(root, "upstreams", i), field+".name", "required")
		}
		if seen[u.Name] {
			return bad(lineOf(root, "upstreams", i, "name"), field+".name", "duplicate upstream %q", u.Name)
		}
		seen[u.Name] = true
		if _, err := NewUpstream(u.config(), nil, nil); err != nil {
			key := "token_endpoint"
			if strings.Contains(err.Error(), "grant") {
				key = "grant"
			}
			if strings.Contains(err.Error(), "ca_file") {
				key = "ca_file"
			}
			return bad(lineOf(root, "upstreams", i, key), field+"."+key, "%v", err)
		}
		for j, tt := range u.TokenTypes {
			if tt == "" || strings.ContainsAny(tt, " \t\r\n") {
				return bad(lineOf(root, "upstreams", i, "token_types", j), fmt.Sprintf("%s.token_types[%d]", field, j), "want a token type such as Bearer, got %q", tt)
			}
		}
	}
	for i, sf := range c.Sinks {
		field := "sinks[" + strconv.Itoa(i) + "]"
		if !seen[sf.Upstream] {
			return bad(lineOf(root, "sinks", i, "upstream"), field+".upstream", "unknown upstream %q", sf.Upstream)
		}
		if !filepath.IsAbs(sf.Path) {
			return bad(lineOf(root, "sinks", i, "path"), field+".path", "must be an absolute path, got %q", sf.Path)
		}
		if _, err := parseMode(sf.Mode); err != nil {
			return bad(lineOf(root, "sinks", i, "mode"), field+".mode", "%v", err)
		}
		if err := sf.OnRotate.Validate(); err != nil {
			path, f := fieldPath(err, []any{"sinks", i, "on_rotate"}, field+".on_rotate")
			return bad(lineOf(root, path...), f, "%v", err)
		}
	}
	if w := c.Cache.RefreshWindow; len(w) != 0 {
		if len(w) != 2 || w[0] <= 0 || w[1] >= 1 || w[0] > w[1] {
			return bad(lineOf(root, "cache", "refresh_window"), "cache.refresh_window", "want [lo, hi] with 0 < lo <= hi < 1, got %v", w)
		}
	}
	if c.Cache.MaxEntries < 0 {
		return bad(lineOf(root, "cache", "max_entries"), "cache.max_entries", "must not be negative")
	}
	if !envName.MatchString(c.Environment) {
		return bad(lineOf(root, "environment"), "environment", "want a short lowercase name such as production or staging, got %q", c.Environment)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return bad(lineOf(root, "log_level"), "log_level", "unknown level %q", c.LogLevel)
	}
	return nil
}

// fieldPath extends a key path and field name with a sinks.FieldError's
// keys, so the error points at the line of the offending key.
func fieldPath(err error, path []any, field string) ([]any, string) {
	var fe *sinks.FieldError
	if errors.As(err, &fe) {
		path = append(path, fe.Key...)
		for _, k := range fe.Key {
			if n, ok := k.(int); ok {
				field += "[" + strconv.Itoa(n) + "]"
			} else {
				field += "." + k.(string)
			}
		}
	}
	return path, field
}

func (u UpstreamFile) config() UpstreamConfig {
	return UpstreamConfig{Name: u.Name, TokenEndpoint: u.TokenEndpoint, Grant: u.Grant, ClientID: u.ClientID,
		SVIDAudience: u.SVIDAudience, Scopes: u.Scopes, CAFile: u.CAFile, Timeout: time.Duration(u.Timeout), TokenTypes: u.TokenTypes}
}

// LimitsConfig returns the per-caller limits.
func (c *Config) LimitsConfig() LimitsConfig {
	return LimitsConfig{UpstreamCallsPerSecond: c.Limits.UpstreamCallsPerSecond, Burst: c.Limits.Burst, KeysPerCaller: c.Limits.KeysPerCaller}
}

// CacheConfig returns the cache settings.
func (c *Config) CacheConfig() CacheConfig {
	cc := CacheConfig{MaxEntries: c.Cache.MaxEntries, IdleTimeout: time.Duration(c.Cache.IdleTimeout), SafetyMargin: time.Duration(c.Cache.SafetyMargin)}
	if len(c.Cache.RefreshWindow) == 2 {
		cc.RefreshWindow = [2]float64{c.Cache.RefreshWindow[0], c.Cache.RefreshWindow[1]}
	}
	return cc
}
