package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodeward/nodeward/test/testutil"
)

// TestAgentSurvivesClosedStdout (issue 11, item 14): stdout is the default
// audit sink; when its reader goes away, an audit write used to kill the
// agent with SIGPIPE (which Restart=on-failure counts as a clean stop). The
// agent keeps serving, and the lost records are counted.
func TestAgentSurvivesClosedStdout(t *testing.T) {
	dir := testutil.SocketDir(t)
	sock := filepath.Join(dir, "workload.sock")
	admin := "127.0.0.1:" + testutil.FreePort(t)
	cfg := filepath.Join(dir, "agent.yaml")
	// No audit_log: audit records go to stdout.
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("trust_domain: example.org\nsocket_path: %s\ndata_dir: %s\nadmin_listen: %s\n%s",
		sock, filepath.Join(dir, "data"), admin, selfEntries())), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "agent", "--config", cfg)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	if err := stdout.Close(); err != nil { // the reader goes away
		t.Fatal(err)
	}
	testutil.WaitServing(t, sock, 10*time.Second)
	env := []string{"SPIFFE_ENDPOINT_SOCKET=unix://" + sock}
	// Each fetch writes an issue record to the closed stdout.
	for i := range 3 {
		if _, errOut, code := testutil.Run(t, bin, env, "fetch", "x509"); code != 0 {
			select {
			case err := <-exited:
				t.Fatalf("fetch %d: the agent died: %v (%s)", i, err, errOut)
			default:
				t.Fatalf("fetch %d: code %d: %s", i, code, errOut)
			}
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for scrape(t, admin, "nodeward_audit_write_errors_total") < 1 {
		if time.Now().After(deadline) {
			t.Fatal("audit records lost to EPIPE were not counted")
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case err := <-exited:
		t.Fatalf("the agent exited: %v", err)
	default:
	}
	if _, errOut, code := testutil.Run(t, bin, env, "fetch", "x509"); code != 0 {
		t.Fatalf("agent not serving after the writes: %s", errOut)
	}
}

// TestAdminListenNonLoopbackNeedsOptIn (issue 11, item 15): the agent
// refuses to serve its unauthenticated admin listener (/v1/status lists
// every entry's selectors) on a non-loopback address unless told to.
func TestAdminListenNonLoopbackNeedsOptIn(t *testing.T) {
	dir := testutil.SocketDir(t)
	port := testutil.FreePort(t)
	cfg, _ := testutil.WriteConfig(t, dir, "example.org", "admin_listen: 0.0.0.0:"+port+"\n")
	errOut, code := runBounded(t, 10*time.Second, "agent", "--config", cfg)
	if code != 78 || !strings.Contains(errOut, "agent.yaml:6: admin_listen: \"0.0.0.0:"+port+"\" is not a loopback address") ||
		!strings.Contains(errOut, "admin_listen_public: true") {
		t.Fatalf("non-loopback admin_listen: code %d, stderr %q; want exit 78 naming file:line and field", code, errOut)
	}
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", "admin_listen: 0.0.0.0:"+port+"\nadmin_listen_public: true\n")
	testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 10*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://127.0.0.1:" + port + "/healthz")
		if err == nil {
			_ = resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("opted-in admin listener not serving: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runBounded runs the binary with args and returns its combined output and
// exit code; a process still running after within is killed and the test
// fails (an agent that should have refused to start but serves).
func runBounded(t *testing.T, within time.Duration, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("nodeward %s still running after %v (killed):\n%s", strings.Join(args, " "), within, out)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// TestCLIFlagsAfterArguments (issue 11, item 16): the README's form
// `nodeward entries check FILE [--trust-domain TD]` works as written with
// the real binary, and "--" ends the flags.
func TestCLIFlagsAfterArguments(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "entries.yaml")
	if err := os.WriteFile(f, []byte("entries:\n  - spiffe_id: spiffe://example.org/web\n    selectors: [unix:uid:1000]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := testutil.Run(t, bin, nil, "entries", "check", f, "--trust-domain", "example.org")
	if code != 0 || !strings.Contains(out, "1 entries, 0 errors") {
		t.Fatalf("entries check FILE --trust-domain TD: code %d\n%s%s", code, out, errOut)
	}
	// Checked against another trust domain, the same file has findings:
	// the flag after FILE was honoured.
	if out, errOut, code = testutil.Run(t, bin, nil, "entries", "check", f, "--trust-domain", "other.org"); code != 1 {
		t.Fatalf("entries check FILE --trust-domain other.org: code %d, want 1 (findings)\n%s%s", code, out, errOut)
	}
	if _, errOut, code = testutil.Run(t, bin, nil, "entries", "check", "--", f, "--trust-domain"); code != 2 || !strings.Contains(errOut, "entries check FILE") {
		t.Fatalf("after --, flags are arguments: code %d %s", code, errOut)
	}
}
