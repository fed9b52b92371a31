package spire

// A real spire-agent (SPIRE v1.15.3, built from tools/spire like the
// server) for interop tests: nodeward and spire-agent as two nodes of one
// trust domain.
//
// The binary is built once, without cgo (spire-agent's only cgo users are
// the standard library's net and os/user, which have pure-Go fallbacks),
// into $XDG_CACHE_HOME or ~/.cache, then nodeward/spire-agent-v1.15.3/,
// under a file lock as the server is. NODEWARD_SPIRE_AGENT names a prebuilt
// binary instead. A failed build fails the test with the build's output.

import (
	"context"
	"crypto/sha1"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nodeward/nodeward/test/testutil"
)

// EnvAgentBinary names a prebuilt spire-agent to use instead of building one.
const EnvAgentBinary = "NODEWARD_SPIRE_AGENT"

var (
	agentBuildOnce sync.Once
	agentBuildPath string
	agentBuildErr  error
)

// AgentBinary returns the path of a spire-agent binary, building it on
// first use. It fails the test if the build fails.
func AgentBinary(t testing.TB) string {
	t.Helper()
	agentBuildOnce.Do(func() { agentBuildPath, agentBuildErr = BuildAgent() })
	if agentBuildErr != nil {
		t.Fatalf("spire-agent: %v", agentBuildErr)
	}
	return agentBuildPath
}

// AgentCacheDir is the versioned directory the built spire-agent is kept in.
func AgentCacheDir() (string, error) {
	dir, err := CacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(filepath.Dir(dir), "spire-agent-"+Version), nil
}

// BuildAgent returns the cached spire-agent, building it under a file lock
// if it is not there yet (or EnvAgentBinary's binary, if set).
func BuildAgent() (string, error) {
	dir, err := AgentCacheDir()
	if err != nil {
		return "", err
	}
	// spire-agent needs no cgo (only net and os/user would use it).
	return buildCached("spire-agent", EnvAgentBinary, dir, "CGO_ENABLED=0")
}

// AgentOptions configure a spire-agent. Zero values give the defaults noted.
type AgentOptions struct {
	// SyncInterval is experimental.sync_interval: entries and bundle
	// poll (1s; SPIRE's default is 5s).
	SyncInterval time.Duration
	// DiscoverWorkloadPath turns on the unix workload attestor's
	// discover_workload_path, so that unix:path selectors are emitted.
	// The binary is not hashed (workload_size_limit = -1: no unix:sha256
	// selector), as nodeward hashes only when an entry asks for sha256;
	// otherwise every call would hash the caller's binary.
	DiscoverWorkloadPath bool
	// TPMDevID attests with SPIRE's tpm_devid plugin instead of a join
	// token: the DevID files and the TPM (a device or swtpm Unix socket).
	TPMDevID *AgentDevID
}

// AgentDevID are spire-agent's tpm_devid plugin_data paths.
type AgentDevID struct {
	Cert, Pub, Priv, Device string
}

// Agent is a running spire-agent, attested to a Server with a join token.
type Agent struct {
	bin        string
	Dir        string // the agent's temp dir (config, data_dir)
	SocketPath string // its Workload API socket
	// ID is the agent's SPIFFE ID, spiffe://<td>/spire/agent/join_token/<token>
	// (or …/tpm_devid/<sha1 of the DevID certificate>):
	// the parent ID of the entries it serves.
	ID   string
	cmd  *exec.Cmd
	done chan struct{}
	log  *testutil.LockedBuffer
}

// StartAgent starts a real spire-agent attested to srv with a fresh join
// token (join_token node attestor), the unix workload attestor, its
// Workload API socket and data_dir in a temp dir, and srv's bundle as its
// bootstrap bundle. It returns once the Workload API answers (node
// attestation done); the agent is stopped in t.Cleanup.
func StartAgent(t testing.TB, srv *Server, o AgentOptions) *Agent {
	t.Helper()
	bin := AgentBinary(t)
	dir := t.TempDir()
	// Unix socket paths are limited to 108 bytes: a long test name can
	// make t.TempDir() too long.
	if len(filepath.Join(dir, "agent.sock")) > 100 {
		d, err := os.MkdirTemp("", "spire-agent-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(d) })
		dir = d
	}
	a := &Agent{bin: bin, Dir: dir, SocketPath: filepath.Join(dir, "agent.sock"), log: &testutil.LockedBuffer{}}
	bundle := filepath.Join(dir, "bootstrap.pem")
	if err := os.WriteFile(bundle, srv.BundlePEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	nodeAttestor, joinToken := `NodeAttestor "join_token" {
    plugin_data {}
  }`, ""
	if d := o.TPMDevID; d != nil {
		certPEM, err := os.ReadFile(d.Cert)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := pem.Decode(certPEM)
		if b == nil {
			t.Fatalf("%s: not PEM", d.Cert)
		}
		a.ID = srv.ID(fmt.Sprintf("/spire/agent/tpm_devid/%x", sha1.Sum(b.Bytes)))
		nodeAttestor = fmt.Sprintf(`NodeAttestor "tpm_devid" {
    plugin_data {
      devid_cert_path = %q
      devid_pub_path = %q
      devid_priv_path = %q
      tpm_device_path = %q
    }
  }`, d.Cert, d.Pub, d.Priv, d.Device)
	} else {
		joinToken = srv.TokenGenerate("")
		a.ID = srv.ID("/spire/agent/join_token/" + joinToken)
	}
	host, port, err := net.SplitHostPort(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if o.SyncInterval == 0 {
		o.SyncInterval = time.Second
	}
	conf := fmt.Sprintf(`agent {
  data_dir = %q
  log_level = "DEBUG"
  server_address = %q
  server_port = %s
  socket_path = %q
  trust_bundle_path = %q
  trust_domain = %q
%s  experimental {
    sync_interval = %q
  }
}

plugins {
  %s
  KeyManager "disk" {
    plugin_data {
      directory = %q
    }
  }
  WorkloadAttestor "unix" {
    plugin_data {
      discover_workload_path = %s
      workload_size_limit = -1
    }
  }
}
`, filepath.Join(dir, "data"), host, port, a.SocketPath, bundle, srv.TrustDomain, joinTokenLine(joinToken),
		o.SyncInterval.String(), nodeAttestor, filepath.Join(dir, "data"), strconv.FormatBool(o.DiscoverWorkloadPath))
	confPath := filepath.Join(dir, "agent.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	a.cmd = exec.Command(bin, "run", "-config", confPath)
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("start spire-agent: %v", err)
	}
	a.done = make(chan struct{})
	go func() { _ = a.cmd.Wait(); close(a.done) }()
	t.Cleanup(func() {
		a.Stop()
		if t.Failed() {
			t.Logf("spire-agent %s log:\n%s", a.ID, a.Log())
		}
	})
	// Ready = the agent's own health check passes: its Workload API
	// answers, which it only serves after node attestation.
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-a.done:
			t.Fatalf("spire-agent exited during start: %v\n%s", a.cmd.ProcessState, a.Log())
		default:
		}
		if err := a.healthcheck(); err == nil {
			return a
		} else if time.Now().After(deadline) {
			t.Fatalf("spire-agent not healthy after 60s: %v\n%s", err, a.Log())
		}
		time.Sleep(100 * time.Millisecond) // polling interval, not synchronisation
	}
}

func joinTokenLine(tok string) string {
	if tok == "" {
		return ""
	}
	return fmt.Sprintf("  join_token = %q\n", tok)
}

// healthcheck runs `spire-agent healthcheck` against the agent's socket.
func (a *Agent) healthcheck() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, a.bin, "healthcheck", "-socketPath", a.SocketPath).CombinedOutput()
	if err != nil {
		return fmt.Errorf("spire-agent healthcheck: %w: %s", err, out)
	}
	return nil
}

// Log returns what the agent has logged so far.
func (a *Agent) Log() string { return a.log.String() }

// Stop stops the agent (SIGTERM, then SIGKILL after 10 s) and waits for
// it. It is safe to call more than once.
func (a *Agent) Stop() {
	if a.cmd == nil || a.cmd.Process == nil {
		return
	}
	select {
	case <-a.done:
		return
	default:
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
	}
}

// PID is the spire-agent process (benchmarks read its CPU time and RSS).
func (a *Agent) PID() int { return a.cmd.Process.Pid }
