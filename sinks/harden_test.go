package sinks

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nodeward/nodeward/internal/safefs"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// State is the field after the parenthesised command name.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

// startSleeper starts a process that would die of SIGHUP.
func startSleeper(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("/bin/sleep", "1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd
}

// TestPIDFileRefusals (item 21a): the process a PID file names is not
// signalled when the file is open to others, a symlink, or names a process
// that is not the configured binary.
func TestPIDFileRefusals(t *testing.T) {
	sleeper := startSleeper(t)
	pid := []byte(strconv.Itoa(sleeper.Process.Pid) + "\n")
	dir := t.TempDir()

	wrong := filepath.Join(dir, "wrong.pid")
	if err := os.WriteFile(wrong, pid, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := signalPIDFile(wrong, "/bin/sh", syscall.SIGHUP); !errors.Is(err, errWrongProcess) {
		t.Fatalf("wrong binary: %v, want errWrongProcess", err)
	}

	writable := filepath.Join(dir, "writable.pid")
	if err := os.WriteFile(writable, pid, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(writable, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := signalPIDFile(writable, "/bin/sleep", syscall.SIGHUP); !errors.Is(err, safefs.ErrUnsafe) {
		t.Fatalf("world-writable pid file: %v, want ErrUnsafe", err)
	}

	link := filepath.Join(dir, "link.pid")
	if err := os.Symlink(wrong, link); err != nil {
		t.Fatal(err)
	}
	if err := signalPIDFile(link, "/bin/sleep", syscall.SIGHUP); !errors.Is(err, safefs.ErrUnsafe) {
		t.Fatalf("symlinked pid file: %v, want ErrUnsafe", err)
	}

	open := filepath.Join(dir, "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	inOpen := filepath.Join(open, "app.pid")
	if err := os.WriteFile(inOpen, pid, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := signalPIDFile(inOpen, "/bin/sleep", syscall.SIGHUP); !errors.Is(err, safefs.ErrUnsafe) {
		t.Fatalf("pid file in a world-writable directory: %v, want ErrUnsafe", err)
	}
	if os.Geteuid() == 0 {
		other := filepath.Join(dir, "other.pid")
		if err := os.WriteFile(other, pid, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(other, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		if err := signalPIDFile(other, "/bin/sleep", syscall.SIGHUP); !errors.Is(err, safefs.ErrUnsafe) {
			t.Fatalf("pid file of another uid: %v, want ErrUnsafe", err)
		}
	}
	if !alive(sleeper.Process.Pid) {
		t.Fatal("the process was signalled")
	}
	// The same file, safe and naming the right binary, does signal.
	if err := signalPIDFile(wrong, "/bin/sleep", syscall.SIGTERM); err != nil {
		t.Fatalf("safe pid file: %v", err)
	}
	waitFor(t, 5*time.Second, "the process to die of SIGTERM", func() bool { return !alive(sleeper.Process.Pid) })
}

// TestWriteRefusesUnsafeDirectory (item 21b): a sink directory below a
// directory others may write to (which lets them swap it for a symlink) is
// refused, and nothing is written through a symlink.
func TestWriteRefusesUnsafeDirectory(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open")
	if err := os.Mkdir(open, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "target")
	if err := os.Mkdir(target, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(open, "tls")); err != nil {
		t.Fatal(err)
	}
	err := writeFileAt(filepath.Join(open, "tls", "svid.pem"), []byte("x"), 0o644, -1, -1)
	if !errors.Is(err, safefs.ErrUnsafe) {
		t.Fatalf("write below a world-writable directory: %v, want ErrUnsafe", err)
	}
	if _, err := os.Stat(filepath.Join(target, "svid.pem")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a file was written through the symlink: %v", err)
	}
	// A final-component symlink is replaced, never followed.
	safe := filepath.Join(dir, "safe", "deeper")
	if err := writeFileAt(filepath.Join(safe, "key.pem"), []byte("k1"), 0o600, -1, -1); err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(target, "victim")
	if err := os.WriteFile(victim, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(safe, "key.pem")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(safe, "key.pem")); err != nil {
		t.Fatal(err)
	}
	if err := writeFileAt(filepath.Join(safe, "key.pem"), []byte("k2"), 0o600, -1, -1); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep" {
		t.Fatalf("the symlink's target was overwritten: %q", b)
	}
	fi, err := os.Lstat(filepath.Join(safe, "key.pem"))
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	if ents, _ := os.ReadDir(safe); len(ents) != 1 {
		t.Fatalf("temporary files left: %v", ents)
	}
}

// TestCommandTimeoutKillsGroup (item 21c): on timeout the command's whole
// process group dies, a daemon it forked included.
func TestCommandTimeoutKillsGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "daemon.pid")
	a, err := NewAction(OnRotate{Command: []string{"/bin/sh", "-c", "sleep 1000 & echo $! > " + pidFile + "; wait"}, Timeout: "300ms"},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	a.Start(context.Background())
	a.Wait()
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	waitFor(t, 5*time.Second, "the forked daemon to die", func() bool { return !alive(pid) })
}

// TestRevokeRemovesFilesAndRunsAction (item 11): a revoked identity's
// files go, and the command runs once with NODEWARD_SINK_EVENT=revoked.
func TestRevokeRemovesFilesAndRunsAction(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "events")
	f := SVIDFiles{X509SVID: filepath.Join(dir, "tls", "svid.pem"), X509Key: filepath.Join(dir, "tls", "key.pem"),
		X509Bundle: filepath.Join(dir, "tls", "bundle.pem"),
		OnRotate:   OnRotate{Command: []string{"/bin/sh", "-c", `echo "$NODEWARD_SINK_EVENT" >> ` + marker}}}
	s := newSink(t, f)
	s.apply(context.Background(), "x509", []file{{f.X509Key, []byte("k"), s.keyMode}, {f.X509SVID, []byte("c"), s.mode}, {f.X509Bundle, []byte("b"), s.mode}})
	s.revokeX509(context.Background())
	s.revokeX509(context.Background())
	for _, p := range []string{f.X509SVID, f.X509Key, f.X509Bundle} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s still there: %v", p, err)
		}
	}
	if b, _ := os.ReadFile(marker); string(b) != "rotate\nrevoked\n" {
		t.Fatalf("events %q, want rotate then revoked once", b)
	}
	// Issued again: written again.
	s.apply(context.Background(), "x509", []file{{f.X509Key, []byte("k"), s.keyMode}, {f.X509SVID, []byte("c"), s.mode}})
	if b, _ := os.ReadFile(f.X509SVID); string(b) != "c" {
		t.Fatalf("not rewritten after re-issue: %q", b)
	}
}

// TestStartCancelKillsGroupAndWaitTracks (items 21c, 23): runs begun with
// Start are tracked by Wait, concurrently; cancelling their context kills
// each command's whole process group.
func TestStartCancelKillsGroupAndWaitTracks(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "daemon.pid")
	a, err := NewAction(OnRotate{Command: []string{"/bin/sh", "-c", "sleep 1000 & echo $! >> " + pidFile + "; wait"}},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	for range 3 {
		a.Start(ctx)
	}
	// Runs are serialized: the first one is running once its daemon's pid is there.
	waitFor(t, 5*time.Second, "the first run", func() bool { b, _ := os.ReadFile(pidFile); return len(b) > 0 })
	cancel()
	done := make(chan struct{})
	go func() { a.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after cancel")
	}
	b, _ := os.ReadFile(pidFile)
	for _, f := range strings.Fields(string(b)) {
		pid, _ := strconv.Atoi(f)
		t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
		waitFor(t, 5*time.Second, "daemon "+f+" to die", func() bool { return !alive(pid) })
	}
}
