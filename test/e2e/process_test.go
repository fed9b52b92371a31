package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
