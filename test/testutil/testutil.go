// Package testutil holds helpers shared by the end-to-end suites: building
// the nodeward binary once, running it as a real agent process, and waiting
// for it with deadlines rather than sleeps.
package testutil

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nodeward/nodeward/test/swtpm"
)

// BuildBinary builds cmd/nodeward into dir and returns its path.
func BuildBinary(dir string) (string, error) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	out := filepath.Join(dir, "nodeward")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-X main.version=e2e", "-o", out, "./cmd/nodeward")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, b)
	}
	return out, nil
}

// SocketDir returns a new 0755 directory (socket directories must not be
// writable by others, and children under other uids must reach them).
func SocketDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nodeward-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// Agent is a nodeward agent process started by a test.
type Agent struct {
	Cmd    *exec.Cmd
	Socket string
	Config string
	mu     sync.Mutex
	log    bytes.Buffer
}

type lockedWriter struct{ a *Agent }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.a.mu.Lock()
	defer w.a.mu.Unlock()
	return w.a.log.Write(p)
}

// Log returns what the agent wrote to stderr so far.
func (a *Agent) Log() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.log.String()
}

// WriteConfig writes an agent config into dir with the given extra YAML
// (entries and other top-level keys) and returns its path and the socket
// path. The audit trail goes to dir/audit.log.
func WriteConfig(t testing.TB, dir, trustDomain, entries string) (cfgPath, sock string) {
	t.Helper()
	sock = filepath.Join(dir, "workload.sock")
	cfg := fmt.Sprintf("trust_domain: %s\nsocket_path: %s\ndata_dir: %s\nlog_level: debug\naudit_log: %s\n%s",
		trustDomain, sock, filepath.Join(dir, "data"), filepath.Join(dir, "audit.log"), entries)
	cfgPath = filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfgPath, sock
}

// StartAgent starts `bin agent --config cfg` and stops it when the test ends.
// It does not wait for readiness: see WaitServing.
func StartAgent(t testing.TB, bin, cfg, sock string) *Agent {
	t.Helper()
	a := StartProcess(t, bin, sock, "agent", "--config", cfg)
	a.Config = cfg
	return a
}

// StartProcess starts bin with args (a nodeward daemon: agent or broker)
// and stops it with SIGINT when the test ends.
func StartProcess(t testing.TB, bin, sock string, args ...string) *Agent {
	t.Helper()
	// NODEWARD_AGENT_ENV adds space-separated VAR=value pairs to the agent's
	// environment only (for example GOMAXPROCS=1 in benchmark runs).
	return startProcessEnv(t, bin, sock, strings.Fields(os.Getenv("NODEWARD_AGENT_ENV")), args...)
}

// startProcessEnv is StartProcess with env added to the environment.
func startProcessEnv(t testing.TB, bin, sock string, env []string, args ...string) *Agent {
	t.Helper()
	a := &Agent{Socket: sock}
	a.Cmd = exec.Command(bin, args...)
	a.Cmd.Env = append(os.Environ(), env...)
	a.Cmd.Stderr = lockedWriter{a}
	a.Cmd.Stdout = lockedWriter{a}
	if err := a.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = a.Cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = a.Cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = a.Cmd.Process.Kill()
			<-done
			t.Errorf("agent did not stop on SIGINT")
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", a.Log())
		}
	})
	return a
}

// WaitServing polls the socket with a go-spiffe client until the agent
// answers (any gRPC status, PermissionDenied included) or the deadline passes.
func WaitServing(t testing.TB, sock string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := workloadapi.FetchX509Bundles(ctx, workloadapi.WithAddr("unix://"+sock))
		cancel()
		if err == nil || status.Code(err) == codes.PermissionDenied {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not serving on %s within %s: %v", sock, within, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Run runs the binary with args and returns stdout, stderr and the exit code.
func Run(t testing.TB, bin string, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %s %s: %v", bin, strings.Join(args, " "), err)
	}
	return stdout.String(), stderr.String(), code
}

// MainWithBinary builds the nodeward binary into a temporary directory, sets
// *bin to its path, runs the tests and exits. For a package's TestMain.
func MainWithBinary(m *testing.M, bin *string) {
	dir, err := os.MkdirTemp("", "nodeward-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	*bin, err = BuildBinary(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	swtpm.Cleanup()
	os.Exit(code)
}

// ProcessAlive reports whether pid runs (exists and is not a zombie).
func ProcessAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// State is the field after the parenthesised command name.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}
