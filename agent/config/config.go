// Package config decodes the agent's YAML configuration strictly: an unknown
// key, a wrong type or a bad value is an error of the form
// "FILE:LINE: FIELD: message" (or `FILE:LINE: unknown key "k"`), so users can
// find and fix it at once.
//
// Security: the config is operator input and is trusted, but it is validated
// in full before anything uses it (selectors, SPIFFE IDs, TTLs, DNS names),
// and a file larger than MaxFileSize is refused. Error messages quote only the
// offending key or value.
package config

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodeward/nodeward/attestors/selector"
)

// MaxFileSize is the largest config or entries file accepted.
const MaxFileSize = 4 << 20

// Defaults and bounds for entry TTLs.
const (
	DefaultX509TTL = time.Hour
	DefaultJWTTTL  = 5 * time.Minute
	MaxTTL         = 365 * 24 * time.Hour
)

// DefaultTrustDomain is the trust domain of the embedded default config.
const DefaultTrustDomain = "nodeward.local"

// Duration is a time.Duration written as "1h", "5m30s" in YAML.
type Duration time.Duration

// Agent is the agent's configuration.
type Agent struct {
	TrustDomain string
	SocketPath  string
	DataDir     string
	AdminListen string
	// JWTIssuer, when set, is the "iss" of JWT-SVIDs and the issuer of the
	// OIDC discovery document on the admin listener.
	JWTIssuer string
	LogLevel  string
	// AuditLog is where audit records go: "stdout" (default), "stderr",
	// "off", or a file path (reopened on SIGUSR1).
	AuditLog string
	// MaxProcs caps the CPUs the agent's Go runtime uses (GOMAXPROCS).
	// Default 1: the agent's per-request work is small and a single P avoids
	// the scheduler's idle spinning, which costs more CPU per call than it
	// saves. 0 (the default when the GOMAXPROCS environment variable is set)
	// leaves Go's own choice: all CPUs, or the container's CPU limit.
	MaxProcs    int
	Entries     []Entry
	EntriesFile string
	Guardrails  Guardrails
	// Source is the file it came from ("" for the embedded default).
	Source string
}

// Entry is one registration entry as configured.
type Entry struct {
	ID        string
	SPIFFEID  string
	Selectors []string
	X509TTL   Duration
	JWTTTL    Duration
	DNSNames  []string
	Hint      string
	// Owner names who is responsible for the entry (team, ticket).
	Owner string
	// Expires is when the entry stops issuing (zero: never).
	Expires time.Time

	// Filled by validation.
	ParsedID        spiffeid.ID
	ParsedSelectors []selector.Selector
	// Pos is "file:line" of the entry.
	Pos string
}

// Guardrails are the policy checks run at load time and by
// `nodeward entries check` (see policy.Check).
type Guardrails struct {
	MaxX509TTL     Duration // default 720h
	MaxJWTTTL      Duration // default 24h
	RequireOwner   bool
	RequireExpires bool
}

// DefaultGuardrails are the guardrails when the config has none.
func DefaultGuardrails() Guardrails {
	return Guardrails{MaxX509TTL: Duration(720 * time.Hour), MaxJWTTTL: Duration(24 * time.Hour)}
}

// Default returns the embedded default: trust domain nodeward.local, the
// default socket and data paths, no admin listener, and no entries (deny-all).
func Default() *Agent {
	return &Agent{
		TrustDomain: DefaultTrustDomain,
		SocketPath:  DefaultSocketPath(),
		DataDir:     DefaultDataDir(),
		LogLevel:    "info",
		AuditLog:    "stdout",
		Guardrails:  DefaultGuardrails(),
		MaxProcs:    defaultMaxProcs(),
	}
}

func defaultMaxProcs() int {
	if os.Getenv("GOMAXPROCS") != "" {
		return 0
	}
	return 1
}

// DefaultSocketPath is /run/nodeward/workload.sock for root, else
// $XDG_RUNTIME_DIR/nodeward/workload.sock, else /tmp/nodeward-UID/workload.sock.
func DefaultSocketPath() string {
	if os.Geteuid() == 0 {
		return "/run/nodeward/workload.sock"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "nodeward", "workload.sock")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("nodeward-%d", os.Geteuid()), "workload.sock")
}

// DefaultDataDir is /var/lib/nodeward for root, else $XDG_STATE_HOME/nodeward
// or ~/.local/state/nodeward.
func DefaultDataDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/nodeward"
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "nodeward")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "nodeward")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("nodeward-%d-state", os.Geteuid()))
}

// Load reads the config file at path (and its entries_file).
func Load(path string) (*Agent, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// LoadEntries reads a file holding only a top-level `entries:` list. The
// entries' SPIFFE IDs are checked for form, not against a trust domain.
func LoadEntries(path string) ([]Entry, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	return parseEntriesFile(path, data, spiffeid.TrustDomain{})
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if st.Size() > MaxFileSize {
		return nil, fmt.Errorf("config: %s: larger than %d bytes", path, MaxFileSize)
	}
	buf := make([]byte, st.Size())
	if _, err := f.ReadAt(buf, 0); err != nil && st.Size() > 0 {
		return nil, fmt.Errorf("config: %s: %w", path, err)
	}
	return buf, nil
}
