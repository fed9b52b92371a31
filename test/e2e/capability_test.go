package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodeward/nodeward/test/testutil"
)

// Unprivileged uids for the agent and for its caller (no passwd entry
// needed).
const (
	agentUID  = 65533
	callerUID = 65532
)

// TestAgentNeedsOnlyCapSysPtrace checks what the systemd unit and the
// DaemonSet claim: an agent running as an unprivileged user with
// CAP_SYS_PTRACE as its only capability attests a caller of another uid by
// binary path and hash; without it, the same caller gets nothing.
func TestAgentNeedsOnlyCapSysPtrace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the agent and its caller under other uids")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv (util-linux) not installed")
	}
	dir := testutil.SocketDir(t)
	// A binary both uids may execute, and its hash for the entry.
	shared := filepath.Join(dir, "bin")
	if err := os.Mkdir(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(shared, "nodeward")
	sum := copyExecutable(t, bin, exe)

	for _, tc := range []struct {
		name string
		caps []string
		want string
	}{
		{"with CAP_SYS_PTRACE only", []string{"--inh-caps=+sys_ptrace", "--ambient-caps=+sys_ptrace", "--bounding-set=-all,+sys_ptrace"}, "spiffe://example.org/caller"},
		{"without capabilities", []string{"--inh-caps=-all", "--bounding-set=-all"}, "PermissionDenied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			home := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			if err := os.Mkdir(home, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(home, agentUID, agentUID); err != nil {
				t.Fatal(err)
			}
			sock := filepath.Join(home, "run", "workload.sock")
			cfg := filepath.Join(dir, tc.name+".yaml")
			err := os.WriteFile(cfg, []byte(fmt.Sprintf(`trust_domain: example.org
socket_path: %s
data_dir: %s/data
audit_log: %s/audit.log
entries:
  - spiffe_id: spiffe://example.org/caller
    selectors: [unix:uid:%d, "unix:path:%s", "unix:sha256:%s"]
`, sock, home, home, callerUID, exe, sum)), 0o644)
			if err != nil {
				t.Fatal(err)
			}
			args := append([]string{fmt.Sprintf("--reuid=%d", agentUID), fmt.Sprintf("--regid=%d", agentUID), "--clear-groups"}, tc.caps...)
			args = append(args, "--", exe, "agent", "--config", cfg)
			agent := testutil.StartProcess(t, "setpriv", sock, args...)
			testutil.WaitServing(t, sock, 10*time.Second)
			out, _ := exec.Command("setpriv", fmt.Sprintf("--reuid=%d", callerUID), fmt.Sprintf("--regid=%d", callerUID), "--clear-groups",
				"--", exe, "fetch", "x509", "--socket", sock).CombinedOutput()
			if !strings.Contains(string(out), tc.want) {
				t.Fatalf("caller uid %d got:\n%s\nwant %q\nagent log:\n%s", callerUID, out, tc.want, agent.Log())
			}
		})
	}
}

// copyExecutable copies src to dst (0755) and returns its sha256 in hex.
func copyExecutable(t *testing.T, src, dst string) string {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(out, h), in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
