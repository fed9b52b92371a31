package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nodeward/nodeward/test/testutil"
)

// attackerUID runs the attacker program of the exec tests.
const attackerUID = 65534

// buildAttacker builds test/attacker into dir (0755, executable by others).
func buildAttacker(t *testing.T, dir string) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	out := filepath.Join(dir, "attacker")
	cmd := exec.Command("go", "build", "-o", out, "./test/attacker")
	cmd.Dir = filepath.Join(filepath.Dir(file), "..", "..")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build attacker: %v\n%s", err, b)
	}
	if err := os.Chmod(out, 0o755); err != nil {
		t.Fatal(err)
	}
	return out
}

// runAttacker runs the attacker with args under cred (nil: as root) and
// returns the line it printed ("ID ..." or "ERR <code>"). The attacker's
// parent may keep running the exec'd target: it is killed when the line
// has arrived.
func runAttacker(t *testing.T, cred *syscall.Credential, args ...string) string {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		lines <- strings.TrimSpace(line)
	}()
	select {
	case line := <-lines:
		if line == "" {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("attacker printed nothing; stderr:\n%s", stderr.String())
		}
		return line
	case <-time.After(30 * time.Second):
		t.Fatalf("attacker gave no answer within 30s; stderr:\n%s", stderr.String())
	}
	return ""
}

// TestExecAfterHandoffGetsNoIdentity is the fd hand-off attack of issue 11
// item 1: a user connects, hands the connection to a child, and execs a
// binary it may execute but neither read nor ptrace (0711, root-owned), so
// that the agent, attesting the connecting PID, sees the target binary. The
// child then asks over the inherited connection. Entries keyed on the
// target's path or hash must not be issued to it.
func TestExecAfterHandoffGetsNoIdentity(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the attacker under another uid")
	}
	dir := testutil.SocketDir(t)
	binDir := filepath.Join(dir, "bin")
	if err := os.Mkdir(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	attacker := buildAttacker(t, binDir)
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(binDir, "target")
	sum := copyExecutable(t, sleep, target)
	if err := os.Chmod(target, 0o711); err != nil { // execute-only for the attacker
		t.Fatal(err)
	}
	entries := fmt.Sprintf(`entries:
  - spiffe_id: spiffe://example.org/target-by-path
    selectors: [unix:uid:%d, "unix:path:%s"]
  - spiffe_id: spiffe://example.org/target-by-hash
    selectors: [unix:uid:%d, "unix:sha256:%s"]
`, attackerUID, target, attackerUID, sum)
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", entries)
	agent := testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 10*time.Second)

	got := runAttacker(t, &syscall.Credential{Uid: attackerUID, Gid: attackerUID},
		attacker, "handoff", sock, target, "60")
	if got != "ERR PermissionDenied" {
		t.Fatalf("child of a process that exec'd %s after connecting got %q, want ERR PermissionDenied", target, got)
	}
	waitLog(t, agent, "exec'd since connect")
	// Counted and audited as identity_changed (the privilege-escalation alert).
	waitLog(t, agent, `"reason":"identity_changed"`)
}

// TestChangedGIDOrGroupsGetNoIdentity is item 2: a process that changes its
// effective gid (as a set-group-ID exec would) or its supplementary groups
// after connecting gets nothing for the new ids on that connection.
func TestChangedGIDOrGroupsGetNoIdentity(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to change gid and groups")
	}
	const gid = 4242
	dir := testutil.SocketDir(t)
	binDir := filepath.Join(dir, "bin")
	if err := os.Mkdir(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	attacker := buildAttacker(t, binDir)
	entries := fmt.Sprintf(`entries:
  - spiffe_id: spiffe://example.org/by-gid
    selectors: [unix:uid:0, unix:gid:%d, "unix:path:%s"]
  - spiffe_id: spiffe://example.org/by-group
    selectors: [unix:uid:0, unix:supplementary-gid:%d, "unix:path:%s"]
`, gid, attacker, gid, attacker)
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", entries)
	agent := testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 10*time.Second)
	for _, mode := range []string{"setgid", "setgroups"} {
		t.Run(mode, func(t *testing.T) {
			got := runAttacker(t, nil, attacker, mode, sock, fmt.Sprint(gid))
			if got != "ERR PermissionDenied" {
				t.Fatalf("%s(%d) after connect: got %q, want ERR PermissionDenied", mode, gid, got)
			}
		})
	}
	waitLog(t, agent, "effective gid or groups changed")
	waitLog(t, agent, `"reason":"identity_changed"`)
}
