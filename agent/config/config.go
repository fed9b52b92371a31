// Package config decodes the agent's YAML configuration strictly: an unknown
// key, a duplicate key, a wrong type or a bad value is an error of the form
// "FILE:LINE: FIELD: message" (or `FILE:LINE: unknown key "k"`), so users and
// their scripts can find and fix it at once.
//
// Security: the config is operator input and is trusted to say what the
// operator wants, but it is validated in full before anything uses it
// (selectors, SPIFFE IDs and their trust domain, TTLs, DNS names, paths). A
// file larger than MaxFileSize is refused, YAML aliases are refused (so no
// alias expansion can multiply the work), and error messages quote only the
// offending key or value, shortened. The config holds no secrets; keys of
// the agent's CA live in data_dir, which this package never reads.
package config

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodeward/nodeward/attestors/selector"
)

// MaxFileSize is the largest config or entries file accepted (4 MiB).
const MaxFileSize = 4 << 20

// Defaults and bounds for entry TTLs.
const (
	DefaultX509TTL = time.Hour
	DefaultJWTTTL  = 5 * time.Minute
	MaxTTL         = 365 * 24 * time.Hour
)

// DefaultTrustDomain is the trust domain of the embedded default config.
const DefaultTrustDomain = "nodeward.local"

// Duration is a time.Duration written as "1h" or "5m30s" in YAML; a bare
// integer is refused (it has no unit).
type Duration time.Duration

// Agent is the agent's configuration.
type Agent struct {
	TrustDomain string
	SocketPath  string
	DataDir     string
	// AdminListen is the host:port of /healthz, /readyz and /metrics; empty
	// disables the admin listener.
	AdminListen string
	// AdminListenPublic allows an AdminListen that is not a loopback
	// address (admin_listen_public: true); without it such an address is
	// a config error.
	AdminListenPublic bool
	// JWTIssuer, when set, is the "iss" of JWT-SVIDs and the issuer of the
	// OIDC discovery document on the admin listener.
	JWTIssuer string
	// LogLevel is debug, info, warn or error.
	LogLevel string
	// Environment names the node's environment (key environment), for
	// symmetry with the broker's: "production" marks a production node.
	// Empty or a short lowercase name.
	Environment string
	// AuditLog is where audit records go: "stdout" (default), "stderr",
	// "off", or a file path (reopened on SIGUSR1).
	AuditLog string
	// MaxProcs caps the CPUs the agent's Go runtime uses (GOMAXPROCS).
	// Default 1: the agent's per-request work is small and a single P avoids
	// the scheduler's idle spinning, which costs more CPU per call than it
	// saves. 0 (the default when the GOMAXPROCS environment variable is set)
	// leaves Go's own choice: all CPUs, or the container's CPU limit.
	MaxProcs int
	// Entries are the inline entries followed by those of EntriesFile.
	Entries []Entry
	// EntriesFile is entries_file as written (relative to the config file's
	// directory when not absolute).
	EntriesFile string
	// Broker is the text of the `broker:` section (nil when absent), padded
	// with empty lines so that broker.ParseConfig reports this file's lines.
	Broker     []byte
	Guardrails Guardrails
	// TPM is the tpm section; nil: no TPM is used.
	TPM *TPM
	// CA is the ca section.
	CA CA
	// Limits bound what Workload API callers can make the agent hold.
	Limits Limits
	// Server is the server section (fleet mode); nil: standalone.
	Server *Server
	// Federation is the federation section (standalone mode); nil: none.
	Federation *Federation
	// Source is the file it came from ("" for the embedded default).
	Source string
}

// Entry is one registration entry as configured.
type Entry struct {
	// ID is the optional stable entry id.
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
	// FederatesWith are the foreign trust domains (configured under
	// federation.federates_with) whose bundles the entry's workloads get.
	FederatesWith []spiffeid.TrustDomain
	// federatesAt is where each FederatesWith name was written.
	federatesAt []fedRef

	// ParsedID is SPIFFEID, parsed; filled by validation.
	ParsedID spiffeid.ID
	// ParsedSelectors are Selectors, parsed, in the same order; filled by
	// validation.
	ParsedSelectors []selector.Selector
	// Pos is "file:line" of the entry, for later error messages.
	Pos string
}

// Guardrails are the policy checks run at load time and by
// `nodeward entries check` (see policy.Check).
type Guardrails struct {
	MaxX509TTL     Duration // default 720h
	MaxJWTTTL      Duration // default 24h
	RequireOwner   bool
	RequireExpires bool
	// StaleAfter: an entry not issued for this long is reported stale in
	// the identity inventory, status and metrics (default 30d).
	StaleAfter Duration
	// DisableStale stops issuing stale entries (an audit record says so)
	// until an operator re-enables them (`nodeward inventory enable`).
	DisableStale bool
}

// DefaultGuardrails are the guardrails when the config has none.
func DefaultGuardrails() Guardrails {
	return Guardrails{MaxX509TTL: Duration(720 * time.Hour), MaxJWTTTL: Duration(24 * time.Hour), StaleAfter: Duration(30 * 24 * time.Hour)}
}

// Default returns the embedded default: trust domain nodeward.local, the
// default socket and data paths, no admin listener, log level info, and no
// entries (deny-all).
func Default() *Agent {
	return &Agent{
		TrustDomain: DefaultTrustDomain,
		SocketPath:  DefaultSocketPath(),
		DataDir:     DefaultDataDir(),
		LogLevel:    "info",
		AuditLog:    "stdout",
		Guardrails:  DefaultGuardrails(),
		MaxProcs:    defaultMaxProcs(),
		Limits:      DefaultLimits(),
		CA:          CA{TTL: Duration(DefaultCATTL), JWTKeyTTL: Duration(DefaultCATTL)},
	}
}

func defaultMaxProcs() int {
	if os.Getenv("GOMAXPROCS") != "" {
		return 0
	}
	return 1
}

// Load reads the config file at path (and its entries_file); defaults fill
// the keys it does not give.
func Load(path string) (*Agent, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes a config held in data; name is the file name used in error
// messages, and a relative entries_file is resolved against
// filepath.Dir(name).
func Parse(name string, data []byte) (*Agent, error) {
	return parse(name, data, readFile)
}

// LoadEntries reads a file holding only a top-level `entries:` list (for
// `nodeward entries check FILE`). The entries' SPIFFE IDs are checked for
// form, not against a trust domain.
func LoadEntries(path string) ([]Entry, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return parseEntriesFile(path, data, spiffeid.TrustDomain{}, map[string]string{})
}

// readFile reads at most MaxFileSize bytes of the regular file at path.
//
// Security: only regular files are read, opened with O_NONBLOCK, so a FIFO
// or a device (a FIFO would block start, and SIGHUP reloads, for good) is
// refused at once. Symlinks are followed (Kubernetes ConfigMap mounts are
// symlinks) and the owner is not checked: who may write the config is the
// operator's choice. A file every user may write is refused, since any of
// them could grant themselves identities through it.
func readFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }() // read-only: nothing to lose on close
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (%s): only regular files are read", path, fileKind(st.Mode()))
	}
	if perm := st.Mode().Perm(); perm&0o002 != 0 {
		return nil, fmt.Errorf("%s: mode %v lets every user write it (and so grant themselves identities): chmod o-w it", path, perm)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxFileSize {
		return nil, tooLarge(path)
	}
	return data, nil
}

// fileKind names the type of a file that is not a regular one.
func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return "mode " + m.String()
}

func tooLarge(name string) error {
	return fmt.Errorf("%s: %w: over %d bytes", name, ErrTooLarge, MaxFileSize)
}
