// Package spire runs a real spire-server (SPIRE v1.15.3, built from the Go
// module proxy through the tools/spire module) for tests: a server per test
// on 127.0.0.1:<free port> with a sqlite datastore in t.TempDir(), and thin
// helpers around its real CLI over the admin socket (join tokens, entries,
// agent ban/evict, bundles).
//
// The binary is built once into a versioned cache directory
// ($XDG_CACHE_HOME or ~/.cache, then nodeward/spire-server-v1.15.3/),
// under a file lock since parallel test binaries may race to build it; the
// build takes ~13 minutes on 2 cores the first time (`make spire-server`
// does it ahead of `make test`). NODEWARD_SPIRE_SERVER names a prebuilt
// binary instead. A failed build fails the test with the build's output:
// nothing is skipped silently.
package spire

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nodeward/nodeward/test/testutil"
)

// Version is the SPIRE release tools/spire/go.mod pins.
const Version = "v1.15.3"

// EnvBinary names a prebuilt spire-server to use instead of building one.
const EnvBinary = "NODEWARD_SPIRE_SERVER"

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// Binary returns the path of a spire-server binary, building it on first
// use (see the package doc). It fails the test if the build fails.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() { buildPath, buildErr = Build() })
	if buildErr != nil {
		t.Fatalf("spire-server: %v", buildErr)
	}
	return buildPath
}

// CacheDir is the versioned directory the built binary is kept in.
func CacheDir() (string, error) {
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("no cache directory: %w", err)
		}
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "nodeward", "spire-server-"+Version), nil
}

// toolsDir is tools/spire in this source tree.
func toolsDir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate the source tree")
	}
	dir := filepath.Join(filepath.Dir(file), "..", "..", "tools", "spire")
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		return "", fmt.Errorf("tools/spire module not found: %w", err)
	}
	return dir, nil
}

// Build returns the cached spire-server, building it under a file lock if it
// is not there yet (or EnvBinary's binary, if set).
func Build() (string, error) {
	dir, err := CacheDir()
	if err != nil {
		return "", err
	}
	return buildCached("spire-server", EnvBinary, dir, "CGO_ENABLED=1") // sqlite datastore needs cgo
}

// buildCached returns the SPIRE program name (cmd/<name> of the release
// tools/spire pins) from the cache directory dir, building it there with
// the cgo setting under a file lock if it is not there yet, since
// parallel test binaries may race to build it. env names a prebuilt
// binary to use instead.
func buildCached(name, env, dir, cgo string) (string, error) {
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", env, p, err)
		}
		return p, nil
	}
	bin := filepath.Join(dir, name)
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("cache dir: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", fmt.Errorf("build lock: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("build lock: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) //nolint:errcheck // closing releases it too
	if _, err := os.Stat(bin); err == nil {
		return bin, nil // another process built it while we waited
	}
	src, err := toolsDir()
	if err != nil {
		return "", err
	}
	tmp := filepath.Join(dir, "."+name+".tmp")
	cmd := exec.Command("go", "build", "-o", tmp, "github.com/spiffe/spire/cmd/"+name)
	cmd.Dir = src
	cmd.Env = append(os.Environ(), cgo)
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build %s %s in %s: %w\n%s", name, Version, src, err, out)
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", fmt.Errorf("install %s: %w", name, err)
	}
	fmt.Fprintf(os.Stderr, "built %s %s into %s in %s\n", name, Version, bin, time.Since(start).Round(time.Second))
	return bin, nil
}

// Options configure a server. Zero values give the defaults noted.
type Options struct {
	TrustDomain         string        // "example.org"
	DefaultX509SVIDTTL  time.Duration // 1h
	AgentTTL            time.Duration // 0: default_x509_svid_ttl
	CATTL               time.Duration // 24h
	CacheReloadInterval time.Duration // 1s (SPIRE's default is 5s)
	// X509PoPCABundle is a PEM file of CA certificates for the x509pop node
	// attestor; empty disables x509pop.
	X509PoPCABundle string
	// TPMDevIDCA and TPMEndorsementCA are PEM files for the tpm_devid node
	// attestor; both empty disables it.
	TPMDevIDCA       string
	TPMEndorsementCA string
	// BundleEndpoint serves the trust domain's bundle (SPIFFE federation,
	// https_spiffe profile) on 127.0.0.1 at a free port (Server.BundleEndpoint).
	BundleEndpoint bool
}

// Server is a running spire-server.
type Server struct {
	t      testing.TB
	bin    string
	Dir    string // the server's temp dir
	Addr   string // 127.0.0.1:port of the agent/server API
	Socket string // admin Unix socket
	// BundleEndpoint is 127.0.0.1:port of the federation bundle endpoint
	// (Options.BundleEndpoint).
	BundleEndpoint string
	TrustDomain    string
	cmd            *exec.Cmd
	confPath       string
	done           chan struct{}
	log            *testutil.LockedBuffer
}

func dur(d, def time.Duration) string {
	if d == 0 {
		d = def
	}
	return fmt.Sprintf("%ds", int(d.Round(time.Second)/time.Second))
}

// Start starts a spire-server and waits until it is healthy; it is stopped
// in t.Cleanup.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	bin := Binary(t)
	if o.TrustDomain == "" {
		o.TrustDomain = "example.org"
	}
	// Unix socket paths are limited to 108 bytes: t.TempDir() can be long.
	dir, err := os.MkdirTemp("", "spire-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	s := &Server{t: t, bin: bin, Dir: dir, Socket: filepath.Join(dir, "admin.sock"), TrustDomain: o.TrustDomain, log: &testutil.LockedBuffer{}}
	port := testutil.FreePort(t)
	s.Addr = net.JoinHostPort("127.0.0.1", port)

	agentTTL := ""
	if o.AgentTTL != 0 {
		agentTTL = fmt.Sprintf("  agent_ttl = %q\n", dur(o.AgentTTL, 0))
	}
	federation := ""
	if o.BundleEndpoint {
		bport := testutil.FreePort(t)
		s.BundleEndpoint = net.JoinHostPort("127.0.0.1", bport)
		federation = fmt.Sprintf("  federation {\n    bundle_endpoint {\n      address = \"127.0.0.1\"\n      port = %s\n    }\n  }\n", bport)
	}
	var plugins strings.Builder
	plugins.WriteString("  NodeAttestor \"join_token\" {\n    plugin_data {}\n  }\n")
	if o.X509PoPCABundle != "" {
		fmt.Fprintf(&plugins, "  NodeAttestor \"x509pop\" {\n    plugin_data {\n      ca_bundle_path = %q\n    }\n  }\n", o.X509PoPCABundle)
	}
	if o.TPMDevIDCA != "" || o.TPMEndorsementCA != "" {
		fmt.Fprintf(&plugins, "  NodeAttestor \"tpm_devid\" {\n    plugin_data {\n      devid_ca_path = %q\n      endorsement_ca_path = %q\n    }\n  }\n", o.TPMDevIDCA, o.TPMEndorsementCA)
	}
	conf := fmt.Sprintf(`server {
  bind_address = "127.0.0.1"
  bind_port = "%s"
  socket_path = %q
  trust_domain = %q
  data_dir = %q
  log_level = "DEBUG"
  default_x509_svid_ttl = %q
%s  ca_ttl = %q
  ca_key_type = "ec-p256"
  ratelimit {
    attestation = false
    signing = false
  }
  experimental {
    cache_reload_interval = %q
  }
%s}

plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = %q
    }
  }
  KeyManager "disk" {
    plugin_data {
      keys_path = %q
    }
  }
%s}
`, port, s.Socket, o.TrustDomain, filepath.Join(dir, "data"),
		dur(o.DefaultX509SVIDTTL, time.Hour), agentTTL, dur(o.CATTL, 24*time.Hour),
		dur(o.CacheReloadInterval, time.Second), federation, filepath.Join(dir, "datastore.sqlite3"), filepath.Join(dir, "keys.json"), plugins.String())
	confPath := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	s.confPath = confPath
	s.start(confPath)
	return s
}

// Restart starts a stopped server again on the same address, datastore
// and keys (the disk key manager): a server outage that ends.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.start(s.confPath)
}

// Resume starts a server Stop stopped, on the same config, datastore and
// port (an outage that lasts as long as the test wants).
func (s *Server) Resume() {
	s.t.Helper()
	s.start(s.confPath)
}

func (s *Server) start(confPath string) {
	t := s.t
	t.Helper()
	s.cmd = exec.Command(s.bin, "run", "-config", confPath)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start spire-server: %v", err)
	}
	s.done = make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("spire-server log:\n%s", s.Log())
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-s.done:
			t.Fatalf("spire-server exited during start: %v\n%s", s.cmd.ProcessState, s.Log())
		default:
		}
		if _, err := s.run(10*time.Second, "healthcheck"); err == nil {
			// The agent API port must accept connections too.
			if c, err := net.DialTimeout("tcp", s.Addr, time.Second); err == nil {
				_ = c.Close()
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("spire-server not healthy after 60s:\n%s", s.Log())
		}
		time.Sleep(100 * time.Millisecond) // polling interval, not synchronisation
	}
}

// Log returns what the server has logged so far.
func (s *Server) Log() string { return s.log.String() }

// Stop stops the server (SIGTERM, then SIGKILL after 10 s) and waits for it.
// It is safe to call more than once.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

const defaultCLITimeout = 30 * time.Second

// run runs a spire-server CLI command against this server's admin socket.
func (s *Server) run(timeout time.Duration, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// Sub-commands take -socketPath after their name ("entry create").
	n := 1
	if len(args) > 1 && !strings.HasPrefix(args[1], "-") {
		n = 2
	}
	full := append(append(append([]string{}, args[:n]...), "-socketPath", s.Socket), args[n:]...)
	cmd := exec.CommandContext(ctx, s.bin, full...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("spire-server %s: %w\n%s%s", strings.Join(full, " "), err, out, stderr.String())
	}
	return out, nil
}

// CLI runs a spire-server CLI command against the admin socket and fails
// the test on error; it returns standard output.
func (s *Server) CLI(args ...string) string {
	s.t.Helper()
	out, err := s.run(defaultCLITimeout, args...)
	if err != nil {
		s.t.Fatal(err)
	}
	return string(out)
}

// CLIErr runs a spire-server CLI command and returns its output and error
// (for commands expected to fail at first).
func (s *Server) CLIErr(args ...string) (string, error) {
	out, err := s.run(defaultCLITimeout, args...)
	return string(out), err
}

// ID is spiffe://<trust domain><path>.
func (s *Server) ID(path string) string { return "spiffe://" + s.TrustDomain + path }

// ServerID is the server's SPIFFE ID, spiffe://<td>/spire/server.
func (s *Server) ServerID() string { return s.ID("/spire/server") }

// TokenGenerate makes a join token (600 s) whose agent gets an entry with
// spiffeID (may be empty for none); it returns the token.
func (s *Server) TokenGenerate(spiffeID string) string {
	s.t.Helper()
	args := []string{"token", "generate", "-ttl", "600"}
	if spiffeID != "" {
		args = append(args, "-spiffeID", spiffeID)
	}
	out := s.CLI(args...)
	for _, line := range strings.Split(out, "\n") {
		if tok, ok := strings.CutPrefix(strings.TrimSpace(line), "Token:"); ok {
			return strings.TrimSpace(tok)
		}
	}
	s.t.Fatalf("token generate: no token in %q", out)
	return ""
}

// Entry is what EntryCreate registers.
type Entry struct {
	ParentID      string   // for Node, ignored (the server ID)
	SPIFFEID      string   // required
	Selectors     []string // "type:value", e.g. "unix:uid:1000"
	X509SVIDTTL   int      // seconds, 0 = server default
	JWTSVIDTTL    int      // seconds, 0 = server default
	DNSNames      []string
	FederatesWith []string // trust domain IDs, e.g. "spiffe://other.org"
	Node          bool     // a node alias: parent is the server
	Hint          string
	Admin         bool
	Downstream    bool
}

// EntryCreate registers e and returns its entry ID.
func (s *Server) EntryCreate(e Entry) string {
	s.t.Helper()
	args := []string{"entry", "create", "-output", "json", "-spiffeID", e.SPIFFEID}
	if e.Node {
		args = append(args, "-node")
	} else {
		args = append(args, "-parentID", e.ParentID)
	}
	for _, sel := range e.Selectors {
		args = append(args, "-selector", sel)
	}
	if e.X509SVIDTTL != 0 {
		args = append(args, "-x509SVIDTTL", strconv.Itoa(e.X509SVIDTTL))
	}
	if e.JWTSVIDTTL != 0 {
		args = append(args, "-jwtSVIDTTL", strconv.Itoa(e.JWTSVIDTTL))
	}
	for _, d := range e.DNSNames {
		args = append(args, "-dns", d)
	}
	for _, f := range e.FederatesWith {
		args = append(args, "-federatesWith", f)
	}
	if e.Hint != "" {
		args = append(args, "-hint", e.Hint)
	}
	if e.Admin {
		args = append(args, "-admin")
	}
	if e.Downstream {
		args = append(args, "-downstream")
	}
	out := s.CLI(args...)
	var res entryResults
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		s.t.Fatalf("entry create: parse %q: %v", out, err)
	}
	if len(res.Results) != 1 || res.Results[0].Status.Code != 0 || res.Results[0].Entry.ID == "" {
		s.t.Fatalf("entry create failed: %s", out)
	}
	return res.Results[0].Entry.ID
}

// entryResults is the JSON answer of `entry create -output json`.
type entryResults struct {
	Results []struct {
		Status struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"status"`
		Entry struct {
			ID string `json:"id"`
		} `json:"entry"`
	} `json:"results"`
}

// EntryDelete deletes an entry by ID.
func (s *Server) EntryDelete(id string) {
	s.t.Helper()
	s.CLI("entry", "delete", "-entryID", id)
}

// AgentBan bans an attested agent by its SPIFFE ID.
func (s *Server) AgentBan(spiffeID string) {
	s.t.Helper()
	s.CLI("agent", "ban", "-spiffeID", spiffeID)
}

// AgentEvict deletes an attested agent's record (it must re-attest).
func (s *Server) AgentEvict(spiffeID string) {
	s.t.Helper()
	s.CLI("agent", "evict", "-spiffeID", spiffeID)
}

// BundlePEM returns the server's X.509 authorities as PEM.
func (s *Server) BundlePEM() []byte {
	s.t.Helper()
	out := s.CLI("bundle", "show", "-format", "pem")
	if b, _ := pem.Decode([]byte(out)); b == nil {
		s.t.Fatalf("bundle show: no PEM in %q", out)
	}
	return []byte(out)
}

// BundleSet stores a federated trust domain's X.509 bundle (PEM), which an
// entry must have before it can federate with that trust domain.
func (s *Server) BundleSet(trustDomainID string, pemData []byte) {
	s.t.Helper()
	p := filepath.Join(s.Dir, "fed-"+strconv.FormatInt(time.Now().UnixNano(), 36)+".pem")
	if err := os.WriteFile(p, pemData, 0o600); err != nil {
		s.t.Fatal(err)
	}
	s.CLI("bundle", "set", "-id", trustDomainID, "-format", "pem", "-path", p)
}

// EntryCreateMany registers workload entries in one CLI call (entry create
// -data), for tests that need many; it returns their IDs in order.
func (s *Server) EntryCreateMany(entries []Entry) []string {
	s.t.Helper()
	type sel struct {
		Type  string `json:"type"`
		Value string `json:"value"`
	}
	type ent struct {
		SPIFFEID  string `json:"spiffe_id"`
		ParentID  string `json:"parent_id"`
		Selectors []sel  `json:"selectors"`
	}
	var req struct {
		Entries []ent `json:"entries"`
	}
	for _, e := range entries {
		je := ent{SPIFFEID: e.SPIFFEID, ParentID: e.ParentID}
		for _, sl := range e.Selectors {
			typ, val, _ := strings.Cut(sl, ":")
			je.Selectors = append(je.Selectors, sel{typ, val})
		}
		req.Entries = append(req.Entries, je)
	}
	data, err := json.Marshal(req)
	if err != nil {
		s.t.Fatal(err)
	}
	p := filepath.Join(s.Dir, "entries-"+strconv.FormatInt(time.Now().UnixNano(), 36)+".json")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		s.t.Fatal(err)
	}
	out := s.CLI("entry", "create", "-output", "json", "-data", p)
	var res entryResults
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		s.t.Fatalf("entry create -data: parse: %v", err)
	}
	if len(res.Results) != len(entries) {
		s.t.Fatalf("entry create -data: %d results for %d entries", len(res.Results), len(entries))
	}
	ids := make([]string, len(entries))
	for i, r := range res.Results {
		if r.Status.Code != 0 || r.Entry.ID == "" {
			s.t.Fatalf("entry create -data: entry %d: %d %s", i, r.Status.Code, r.Status.Message)
		}
		ids[i] = r.Entry.ID
	}
	return ids
}
