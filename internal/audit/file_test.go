package audit

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nodeward/nodeward/internal/safefs"
)

// privateDir returns a 0755 directory the agent's checks accept.
func privateDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Item 6 of issue 11: the audit file is never a symlink, another user's
// file, a file others may write, a hard link, a FIFO or a device, and its
// directory passes the StrictModes walk.
func TestOpenRefusesUnsafeFiles(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, dir, p string) string // returns the path to open
		want  string
		root  bool
	}{
		{"symlink to a file", func(t *testing.T, dir, p string) string {
			target := filepath.Join(dir, "target")
			must(t, os.WriteFile(target, nil, 0o600))
			must(t, os.Symlink(target, p))
			return p
		}, "symlink", false},
		{"dangling symlink", func(t *testing.T, dir, p string) string {
			must(t, os.Symlink(filepath.Join(dir, "nowhere"), p))
			return p
		}, "symlink", false},
		{"mode 0666", func(t *testing.T, dir, p string) string {
			must(t, os.WriteFile(p, nil, 0o600))
			must(t, os.Chmod(p, 0o666))
			return p
		}, "open to group or others", false},
		{"group-writable", func(t *testing.T, dir, p string) string {
			must(t, os.WriteFile(p, nil, 0o600))
			must(t, os.Chmod(p, 0o660))
			return p
		}, "open to group or others", false},
		{"owned by another uid", func(t *testing.T, dir, p string) string {
			must(t, os.WriteFile(p, nil, 0o600))
			must(t, os.Chown(p, 65534, 65534))
			return p
		}, "owned by uid 65534", true},
		{"hard link", func(t *testing.T, dir, p string) string {
			other := filepath.Join(dir, "other")
			must(t, os.WriteFile(other, nil, 0o600))
			must(t, os.Link(other, p))
			return p
		}, "hard links", false},
		{"FIFO", func(t *testing.T, dir, p string) string {
			must(t, syscall.Mkfifo(p, 0o600))
			return p
		}, "not a regular file", false},
		{"directory writable by others", func(t *testing.T, dir, p string) string {
			sub := filepath.Join(dir, "open")
			must(t, os.Mkdir(sub, 0o755))
			must(t, os.Chmod(sub, 0o777))
			return filepath.Join(sub, "audit.log")
		}, "writable by group or others", false},
		{"directory owned by another uid", func(t *testing.T, dir, p string) string {
			sub := filepath.Join(dir, "theirs")
			must(t, os.Mkdir(sub, 0o755))
			must(t, os.Chown(sub, 65534, 65534))
			return filepath.Join(sub, "audit.log")
		}, "owned by uid 65534", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root && os.Geteuid() != 0 {
				t.Skip("needs root to chown")
			}
			dir := privateDir(t)
			p := tc.setup(t, dir, filepath.Join(dir, "audit.log"))
			done := make(chan struct{})
			var err error
			go func() { _, err = Open(p); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Open blocked") // a FIFO opened for writing waits for a reader
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "audit log") {
				t.Fatalf("Open(%s) = %v, want an error about %q", p, err, tc.want)
			}
			if !errors.Is(err, safefs.ErrUnsafe) {
				t.Errorf("error %v is not safefs.ErrUnsafe", err)
			}
		})
	}
}

// A safe pre-existing file (0600 or 0640, ours) is appended to; a new one
// is created 0640.
func TestOpenAcceptsSafeFiles(t *testing.T) {
	dir := privateDir(t)
	p := filepath.Join(dir, "audit.log")
	must(t, os.WriteFile(p, []byte("old\n"), 0o600))
	l, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	must(t, l.Log(Record{Event: "reload", Decision: "allow"}))
	must(t, l.Close())
	if b, _ := os.ReadFile(p); !strings.HasPrefix(string(b), "old\n{") {
		t.Errorf("file = %q", b)
	}
	p2 := filepath.Join(dir, "new.log")
	l, err = Open(p2)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if st, _ := os.Stat(p2); st.Mode().Perm() != 0o640 {
		t.Errorf("new file mode %v", st.Mode().Perm())
	}
}

// A reopen onto something unsafe keeps the old file and says why.
func TestReopenRefusedKeepsOldFile(t *testing.T) {
	dir := privateDir(t)
	p := filepath.Join(dir, "audit.log")
	l, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// Rotation, then someone plants a symlink where the new file goes.
	must(t, os.Rename(p, p+".1"))
	target := filepath.Join(dir, "elsewhere")
	must(t, os.WriteFile(target, nil, 0o600))
	must(t, os.Symlink(target, p))
	if err := l.Reopen(); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("Reopen onto a symlink: %v", err)
	}
	must(t, l.Log(Record{Event: "reload", Decision: "allow", Reason: "after"}))
	if b, _ := os.ReadFile(target); len(b) != 0 {
		t.Errorf("the symlink's target was written: %q", b)
	}
	if recs := readRecords(t, p+".1"); len(recs) != 1 || recs[0].Reason != "after" {
		t.Errorf("old file: %+v", recs)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
