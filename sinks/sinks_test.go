package sinks

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func intp(v int) *int { return &v }

func TestValidate(t *testing.T) {
	ok := SVIDFiles{X509SVID: "/a/svid.pem", X509Key: "/a/key.pem"}
	tests := []struct {
		name    string
		f       SVIDFiles
		wantKey string // first element of FieldError.Key; "" = valid
		wantMsg string
	}{
		{"ok", ok, "", ""},
		{"nothing", SVIDFiles{}, "", "names no file"},
		{"relative", SVIDFiles{X509Bundle: "b.pem"}, "x509_bundle", "absolute"},
		{"cert without key", SVIDFiles{X509SVID: "/a/s.pem"}, "x509_svid", "go together"},
		{"duplicate path", SVIDFiles{X509SVID: "/a/s.pem", X509Key: "/a/s.pem"}, "x509_key", "used twice"},
		{"jwt audience", SVIDFiles{JWTSVIDs: []JWTFile{{Path: "/a/t"}}}, "jwt_svids", "audience is required"},
		{"bad mode", SVIDFiles{X509Bundle: "/b", Mode: "0999"}, "mode", "octal"},
		{"signal without target", SVIDFiles{X509Bundle: "/b", OnRotate: OnRotate{Signal: "HUP"}}, "on_rotate", "needs pid_file or unit"},
		{"unknown signal", SVIDFiles{X509Bundle: "/b", OnRotate: OnRotate{Signal: "BOGUS", PIDFile: "/p", Binary: "/x"}}, "on_rotate", "unknown signal"},
		{"pid file without signal", SVIDFiles{X509Bundle: "/b", OnRotate: OnRotate{PIDFile: "/p"}}, "on_rotate", "need signal"},
		{"pid file without binary", SVIDFiles{X509Bundle: "/b", OnRotate: OnRotate{Signal: "HUP", PIDFile: "/p"}}, "on_rotate", "needs binary"},
		{"relative binary", SVIDFiles{X509Bundle: "/b", OnRotate: OnRotate{Signal: "HUP", PIDFile: "/p", Binary: "nginx"}}, "on_rotate", "absolute"},
		{"binary without pid file", SVIDFiles{X509Bundle: "/b", OnRotate: OnRotate{Signal: "HUP", Unit: "x.service", Binary: "/x"}}, "on_rotate", "goes with pid_file"},
		{"bad timeout", SVIDFiles{X509Bundle: "/b", OnRotate: OnRotate{Command: []string{"true"}, Timeout: "soon"}}, "on_rotate", "duration"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.f.Validate()
			if tt.wantMsg == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("got %v, want a FieldError containing %q", err, tt.wantMsg)
			}
			if tt.wantKey != "" && (len(fe.Key) == 0 || fe.Key[0] != tt.wantKey) {
				t.Fatalf("error key %v, want %s…", fe.Key, tt.wantKey)
			}
		})
	}
}

func newSink(t *testing.T, f SVIDFiles) *Sink {
	t.Helper()
	s, err := New(f, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestApplyWritesChangedFilesOnce: modes and owner are applied, an
// unchanged state writes nothing and runs no action.
func TestApplyWritesChangedFilesOnce(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "ran")
	f := SVIDFiles{X509SVID: filepath.Join(dir, "out", "svid.pem"), X509Key: filepath.Join(dir, "out", "key.pem"),
		OnRotate: OnRotate{Command: []string{"/bin/sh", "-c", "echo x >> " + marker}}}
	if os.Geteuid() == 0 {
		f.Owner, f.Group = intp(65534), intp(65534)
	}
	s := newSink(t, f)
	files := []file{{f.X509Key, []byte("key-1"), s.keyMode}, {f.X509SVID, []byte("cert-1"), s.mode}}
	s.apply(context.Background(), "x509", files)
	s.apply(context.Background(), "x509", files) // same content: no write, no action
	if s.Rotations() != 1 {
		t.Fatalf("rotations = %d, want 1", s.Rotations())
	}
	for p, want := range map[string]os.FileMode{f.X509Key: 0o600, f.X509SVID: 0o644} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", p, fi.Mode().Perm(), want)
		}
		if st := fi.Sys().(*syscall.Stat_t); os.Geteuid() == 0 && (st.Uid != 65534 || st.Gid != 65534) {
			t.Errorf("%s owned by %d:%d, want 65534:65534", p, st.Uid, st.Gid)
		}
	}
	s.apply(context.Background(), "x509", []file{{f.X509SVID, []byte("cert-2"), s.mode}})
	if ran, _ := os.ReadFile(marker); strings.Count(string(ran), "x") != 2 || s.Rotations() != 2 {
		t.Fatalf("action ran %q times over 2 rotations", ran)
	}
	if got, _ := os.ReadFile(f.X509SVID); string(got) != "cert-2" {
		t.Fatalf("svid file holds %q", got)
	}
}

// TestSignalThroughPIDFile: a real process named by a PID file gets the
// configured signal; a missing PID file is "not running", not an error.
// The signal is USR1, not HUP: a shell cannot trap a signal that was
// ignored when it started, and a test run under nohup ignores HUP.
func TestSignalThroughPIDFile(t *testing.T) {
	dir := t.TempDir()
	got := filepath.Join(dir, "got")
	cmd := exec.Command("/bin/sh", "-c", `trap 'echo USR1 > `+got+`; exit 0' USR1; echo ready; while :; do sleep 0.05; done`)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	buf := make([]byte, 6)
	if _, err := out.Read(buf); err != nil { // the trap is installed once it prints
		t.Fatal(err)
	}
	pidFile := filepath.Join(dir, "app.pid")
	if err := signalPIDFile(pidFile, "/bin/sh", syscall.SIGHUP); !errors.Is(err, errNotRunning) {
		t.Fatalf("missing pid file: %v, want errNotRunning", err)
	}
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	var logMu sync.Mutex
	s, err := New(SVIDFiles{X509Bundle: filepath.Join(dir, "b.pem"), OnRotate: OnRotate{Signal: "SIGUSR1", PIDFile: pidFile, Binary: "/bin/sh"}},
		slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	s.runAction(context.Background(), EventRotate)
	// The shell runs its trap once its current `sleep 0.05` ends; on a
	// loaded CI machine that can take a while.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if b, _ := os.ReadFile(got); strings.TrimSpace(string(b)) == "USR1" {
			break
		}
		if time.Now().After(deadline) {
			logMu.Lock()
			defer logMu.Unlock()
			t.Fatalf("the process never got SIGUSR1; sink log:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := os.WriteFile(pidFile, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := signalPIDFile(pidFile, "/bin/sh", syscall.SIGHUP); err == nil || errors.Is(err, errNotRunning) {
		t.Fatalf("garbage pid file: %v", err)
	}
}

func TestPickByHint(t *testing.T) {
	web := &x509svid.SVID{ID: spiffeid.RequireFromString("spiffe://example.org/web"), Hint: "web"}
	db := &x509svid.SVID{ID: spiffeid.RequireFromString("spiffe://example.org/db"), Hint: "db"}
	svids := []*x509svid.SVID{web, db}
	if got := newSink(t, SVIDFiles{X509Bundle: "/b"}).pick(svids); got != web {
		t.Fatalf("no hint: got %v, want the first (default) SVID", got)
	}
	if got := newSink(t, SVIDFiles{X509Bundle: "/b", Hint: "db"}).pick(svids); got != db {
		t.Fatalf("hint db: got %v", got)
	}
	if got := newSink(t, SVIDFiles{X509Bundle: "/b", Hint: "cache"}).pick(svids); got != nil {
		t.Fatalf("unknown hint: got %v, want none (never another workload's files)", got)
	}
}

// lockedWriter serializes writes to a strings.Builder (a test's log).
type lockedWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}
