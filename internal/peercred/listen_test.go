//go:build linux

package peercred

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func mode(t *testing.T, p string) os.FileMode {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func TestListenModes(t *testing.T) {
	dir := sockDir(t)
	p := filepath.Join(dir, "new", "sub", "s.sock")
	l, err := Listen(p)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if m := mode(t, p); m != 0o777 {
		t.Errorf("socket mode %v, want 0777", m)
	}
	if m := mode(t, filepath.Dir(p)); m != 0o755 {
		t.Errorf("created directory mode %v, want 0755", m)
	}
	c, err := net.Dial("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
}

func TestListenLiveSocketNotStolen(t *testing.T) {
	l := listen(t)
	p := l.Addr().String()
	if l2, err := Listen(p); !errors.Is(err, ErrSocketInUse) {
		if l2 != nil {
			_ = l2.Close()
		}
		t.Fatalf("second Listen on a live socket: %v, want ErrSocketInUse", err)
	}
	// The first listener still owns the path.
	c, err := net.Dial("unix", p)
	if err != nil {
		t.Fatalf("live socket disturbed: %v", err)
	}
	defer c.Close()
	if info := get(t, accept(t, l)); int(info.PID) != os.Getpid() {
		t.Fatalf("accepted a connection from pid %d, want ours", info.PID)
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	p := filepath.Join(sockDir(t), "s.sock")
	l, err := Listen(p)
	if err != nil {
		t.Fatal(err)
	}
	// A crashed agent leaves its socket file behind.
	l.SetUnlinkOnClose(false)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(p); err != nil {
		t.Fatal("stale socket not left behind:", err)
	}
	l2, err := Listen(p)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	defer l2.Close()
	c, err := net.Dial("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
}

func TestListenRefuses(t *testing.T) {
	root := sockDir(t)
	mk := func(t *testing.T, name string, perm os.FileMode) string {
		t.Helper()
		d := filepath.Join(root, name)
		if err := os.Mkdir(d, perm); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, perm); err != nil {
			t.Fatal(err)
		}
		return d
	}
	tests := []struct {
		name     string
		rootOnly bool
		setup    func(t *testing.T) (path, unsafeDir string)
		wantErr  error // nil: any error
	}{
		{"relative path", false, func(*testing.T) (string, string) { return "relative.sock", "" }, nil},
		{"regular file", false, func(t *testing.T) (string, string) {
			p := filepath.Join(root, "file")
			if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			return p, ""
		}, nil},
		{"parent is a file", false, func(t *testing.T) (string, string) {
			p := filepath.Join(root, "notdir")
			if err := os.WriteFile(p, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(p, "s.sock"), ""
		}, nil},
		{"group-writable parent", false, func(t *testing.T) (string, string) {
			d := mk(t, "gw", 0o775)
			return filepath.Join(d, "s.sock"), d
		}, ErrUnsafeDir},
		{"world-writable parent", false, func(t *testing.T) (string, string) {
			d := mk(t, "ww", 0o757)
			return filepath.Join(d, "s.sock"), d
		}, ErrUnsafeDir},
		{"sticky world-writable parent", false, func(t *testing.T) (string, string) {
			d := mk(t, "sticky", 0o777|os.ModeSticky)
			return filepath.Join(d, "s.sock"), d
		}, ErrUnsafeDir},
		{"parent owned by another user", true, func(t *testing.T) (string, string) {
			d := mk(t, "other", 0o755)
			if err := os.Chown(d, 65534, 65534); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(d, "s.sock"), d
		}, ErrUnsafeDir},
		{"parent is a symlink owned by another user", true, func(t *testing.T) (string, string) {
			d := mk(t, "target", 0o755)
			link := filepath.Join(root, "link")
			if err := os.Symlink(d, link); err != nil {
				t.Fatal(err)
			}
			if err := os.Lchown(link, 65534, 65534); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(link, "s.sock"), link
		}, ErrUnsafeDir},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.rootOnly && os.Geteuid() != 0 {
				t.Skip("needs root to chown to uid 65534")
			}
			p, unsafeDir := tt.setup(t)
			l, err := Listen(p)
			if err == nil {
				_ = l.Close()
				t.Fatalf("Listen(%s) succeeded", p)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if errors.Is(err, ErrSocketInUse) {
				t.Fatalf("err = %v: nothing listens there", err)
			}
			if unsafeDir != "" && !strings.Contains(err.Error(), unsafeDir) {
				t.Errorf("error %q does not name the directory %s", err, unsafeDir)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(root, "file")); err != nil {
		t.Errorf("regular file removed: %v", err)
	}
}

func TestListenSymlinkedParentOwnedByUs(t *testing.T) {
	root := sockDir(t)
	target := filepath.Join(root, "target")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(root, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	l, err := Listen(filepath.Join(link, "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := os.Lstat(filepath.Join(target, "s.sock")); err != nil {
		t.Fatal(err)
	}
}

// TestListenChecksEveryParent: a directory anywhere above the socket's that
// another user can write (or owns) lets that user rename the socket
// directory away and put one with a fake socket in its place, so it is
// refused; a sticky one (like /tmp) is not.
func TestListenChecksEveryParent(t *testing.T) {
	tests := []struct {
		name     string
		rootOnly bool
		perm     os.FileMode
		chown    bool
		refused  bool
	}{
		{"other-writable grandparent", false, 0o777, false, true},
		{"group-writable grandparent", false, 0o775, false, true},
		{"grandparent owned by another user", true, 0o755, true, true},
		{"sticky other-writable grandparent", false, 0o777 | os.ModeSticky, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.rootOnly && os.Geteuid() != 0 {
				t.Skip("needs root to chown to uid 65534")
			}
			gp := filepath.Join(sockDir(t), "gp")
			sock := filepath.Join(gp, "parent", "run", "s.sock")
			if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(gp, tt.perm); err != nil {
				t.Fatal(err)
			}
			if tt.chown {
				if err := os.Chown(gp, 65534, 65534); err != nil {
					t.Fatal(err)
				}
			}
			l, err := Listen(sock)
			if !tt.refused {
				if err != nil {
					t.Fatalf("Listen: %v", err)
				}
				_ = l.Close()
				return
			}
			if err == nil {
				_ = l.Close()
				t.Fatalf("Listen(%s) succeeded under %s", sock, tt.name)
			}
			if !errors.Is(err, ErrUnsafeDir) || !strings.Contains(err.Error(), gp) {
				t.Fatalf("err = %v, want ErrUnsafeDir naming %s", err, gp)
			}
			if _, err := os.Lstat(sock); err == nil {
				t.Error("socket created anyway")
			}
		})
	}
}
