package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nodeward/nodeward/test/testutil"
)

// Tests of the file sinks (issue 11, items 21 and 11): PID files another
// user wrote, sink directories another user can swap, on_rotate commands
// that fork, and the files of a revoked identity.

// sinkEnv starts an agent whose one entry is the nodeward binary run as
// root, and returns the directory, the agent and its socket.
func sinkEnv(t *testing.T) (dir string, agent *testutil.Agent, sock string) {
	t.Helper()
	requireRoot(t)
	dir = testutil.SocketDir(t)
	entries := fmt.Sprintf("entries:\n  - id: web\n    spiffe_id: spiffe://example.org/web\n    selectors: [unix:uid:%d, \"unix:path:%s\"]\n    jwt_ttl: 5m\n",
		os.Geteuid(), bin)
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", entries)
	agent = testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 10*time.Second)
	return dir, agent, sock
}

// startSidecar starts `nodeward broker` with the given svid_files YAML.
func startSidecar(t *testing.T, dir, sock, svidFiles string) *testutil.Agent {
	t.Helper()
	p := filepath.Join(dir, "sidecar.yaml")
	cfg := fmt.Sprintf("workload_socket: unix://%s\nlisten: %s/broker.sock\nsvid_files:\n%s", sock, dir, svidFiles)
	if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return testutil.StartProcess(t, bin, "", "broker", "--config", p)
}

// poll waits until cond holds, failing with the process log after within.
func poll(t *testing.T, within time.Duration, what string, p *testutil.Agent, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; log:\n%s", what, p.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// victim starts a root process that SIGHUP would kill.
func victim(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("/bin/sleep", "1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd.Process.Pid
}

// TestSinkPIDFileOfAnotherUserNotSignaled (item 21a): a PID file written by
// another uid (in a directory that uid owns), and a root-owned PID file
// naming a process that is not the configured binary, both name a root
// process; the sidecar signals neither.
func TestSinkPIDFileOfAnotherUserNotSignaled(t *testing.T) {
	dir, _, sock := sinkEnv(t)
	pid := victim(t)
	appDir := filepath.Join(dir, "app")
	if err := os.Mkdir(appDir, 0o755); err != nil {
		t.Fatal(err)
	}
	userPID := filepath.Join(appDir, "app.pid")
	if err := os.WriteFile(userPID, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	chownAll(t, appDir)
	rootPID := filepath.Join(dir, "nginx.pid")
	if err := os.WriteFile(rootPID, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	side := startSidecar(t, dir, sock, fmt.Sprintf(`  - x509_bundle: %s/a/bundle.pem
    on_rotate: {signal: HUP, pid_file: %s, binary: /bin/sleep}
  - x509_bundle: %s/b/bundle.pem
    on_rotate: {signal: HUP, pid_file: %s, binary: /usr/sbin/nginx}
`, dir, userPID, dir, rootPID))
	poll(t, 15*time.Second, "both signals refused", side, func() bool {
		return strings.Count(side.Log(), "on_rotate signal refused") >= 2
	})
	log := side.Log()
	if !strings.Contains(log, "owned by uid 65534") || !strings.Contains(log, "not the configured binary") {
		t.Fatalf("refusals do not say why:\n%s", log)
	}
	if !testutil.ProcessAlive(pid) {
		t.Fatal("the root process named by the PID file was signalled")
	}
}

// TestSinkDirectorySwappedForSymlink (item 21b): a user who owns a parent
// of a sink's directory replaces the directory with a symlink to a root
// directory; the sidecar writes nothing there.
func TestSinkDirectorySwappedForSymlink(t *testing.T) {
	dir, _, sock := sinkEnv(t)
	home := filepath.Join(dir, "home")
	if err := os.Mkdir(home, 0o755); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "etc-ssl")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(home, "tls")); err != nil {
		t.Fatal(err)
	}
	chownAll(t, home) // the user's home and the symlink in it
	side := startSidecar(t, dir, sock, fmt.Sprintf(`  - x509_svid: %s/tls/svid.pem
    x509_key: %s/tls/svid_key.pem
`, home, home))
	poll(t, 15*time.Second, "the write refused", side, func() bool {
		return strings.Contains(side.Log(), "svid file sink: write failed")
	})
	if !strings.Contains(side.Log(), "unsafe path") {
		t.Fatalf("refusal does not say why:\n%s", side.Log())
	}
	if ents, _ := os.ReadDir(target); len(ents) != 0 {
		t.Fatalf("root wrote through the user's symlink: %v", ents)
	}
}

// TestOnRotateTimeoutKillsForkedDaemon (item 21c): an on_rotate command that
// forks a daemon and hangs is killed at its timeout with its daemon.
func TestOnRotateTimeoutKillsForkedDaemon(t *testing.T) {
	dir, _, sock := sinkEnv(t)
	daemonPID := filepath.Join(dir, "daemon.pid")
	side := startSidecar(t, dir, sock, fmt.Sprintf(`  - x509_bundle: %s/tls/bundle.pem
    on_rotate:
      command: [/bin/sh, -c, "sleep 1000 & echo $! > %s; wait"]
      timeout: 1s
`, dir, daemonPID))
	var pid int
	poll(t, 15*time.Second, "the daemon's pid", side, func() bool {
		b, err := os.ReadFile(daemonPID)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	})
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	poll(t, 15*time.Second, "the forked daemon to die with the command", side, func() bool { return !testutil.ProcessAlive(pid) })
}

// TestRevokedIdentityFilesRemoved (item 11): when the agent revokes the
// identity, its X.509 and JWT-SVID files are removed and on_rotate runs
// with NODEWARD_SINK_EVENT=revoked.
func TestRevokedIdentityFilesRemoved(t *testing.T) {
	dir, agent, sock := sinkEnv(t)
	tls := filepath.Join(dir, "tls")
	events := filepath.Join(dir, "events")
	side := startSidecar(t, dir, sock, fmt.Sprintf(`  - x509_svid: %[1]s/svid.pem
    x509_key: %[1]s/svid_key.pem
    x509_bundle: %[1]s/bundle.pem
    on_rotate:
      command: [/bin/sh, -c, "echo $NODEWARD_SINK_EVENT >> %[2]s"]
  - jwt_svids: [{audience: reports, path: %[1]s/reports.jwt}]
`, tls, events))
	files := []string{"svid.pem", "svid_key.pem", "bundle.pem", "reports.jwt"}
	poll(t, 15*time.Second, "the files", side, func() bool {
		for _, f := range files {
			if _, err := os.Stat(filepath.Join(tls, f)); err != nil {
				return false
			}
		}
		b, _ := os.ReadFile(events)
		return len(b) > 0 // the action ran once the files were written
	})
	cfg, err := os.ReadFile(agent.Config)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(agent.Config, cfg[:strings.Index(string(cfg), "entries:")], 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := agent.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	poll(t, 30*time.Second, "the revoked identity's files to go", side, func() bool {
		for _, f := range files {
			if _, err := os.Lstat(filepath.Join(tls, f)); err == nil {
				return false
			}
		}
		return true
	})
	poll(t, 15*time.Second, "on_rotate with NODEWARD_SINK_EVENT=revoked", side, func() bool {
		b, _ := os.ReadFile(events)
		return strings.Contains(string(b), "revoked")
	})
	t.Logf("files removed and on_rotate ran %v after the revoking reload", time.Since(start).Round(time.Millisecond))
}
