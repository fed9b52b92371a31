package safefs

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// other is a uid that is neither root nor us.
const other = 65534

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown files to another uid")
	}
}

func TestCheckDirUnderStickyTmp(t *testing.T) {
	dir := t.TempDir() // below /tmp (sticky, 1777): allowed above a checked dir
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := CheckDir(dir); err != nil {
		t.Fatalf("CheckDir(%s) = %v", dir, err)
	}
	if err := CheckDir(os.TempDir()); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("CheckDir(/tmp) = %v, want ErrUnsafe (sticky is fine above, not as the dir itself)", err)
	}
}

func TestCheckDirRefusesWritableParent(t *testing.T) {
	base := t.TempDir()
	mid := filepath.Join(base, "mid")
	leaf := filepath.Join(mid, "leaf")
	if err := os.MkdirAll(leaf, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(mid, 0o777); err != nil { // other-writable, not sticky
		t.Fatal(err)
	}
	if err := CheckDir(leaf); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("CheckDir = %v, want ErrUnsafe for an other-writable grandparent", err)
	}
}

func TestCheckDirRefusesOtherOwner(t *testing.T) {
	needRoot(t)
	base := t.TempDir()
	leaf := filepath.Join(base, "owned-by-other", "leaf")
	if err := os.MkdirAll(leaf, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Dir(leaf), other, other); err != nil {
		t.Fatal(err)
	}
	if err := CheckDir(leaf); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("CheckDir = %v, want ErrUnsafe for a parent owned by uid %d", err, other)
	}
}

func TestCheckDirFollowsSymlinks(t *testing.T) {
	base := t.TempDir()
	bad := filepath.Join(base, "bad")
	if err := os.MkdirAll(filepath.Join(bad, "real"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(bad, 0o777); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink("bad/real", link); err != nil {
		t.Fatal(err)
	}
	if err := CheckDir(link); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("CheckDir(link) = %v, want ErrUnsafe: the link leads below an other-writable dir", err)
	}
	if err := os.Chmod(bad, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := CheckDir(link); err != nil {
		t.Fatalf("CheckDir(link) = %v once the target is safe", err)
	}
}

func TestCheckFile(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "key.pem")
	if err := os.WriteFile(key, []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CheckFile(key, true); err != nil {
		t.Fatalf("CheckFile(0600) = %v", err)
	}
	if err := os.Chmod(key, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := CheckFile(key, true); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("CheckFile(0640, private) = %v, want ErrUnsafe", err)
	}
	if err := CheckFile(key, false); err != nil {
		t.Fatalf("CheckFile(0640, public) = %v", err)
	}
	link := filepath.Join(dir, "link.pem")
	if err := os.Symlink(key, link); err != nil {
		t.Fatal(err)
	}
	if err := CheckFile(link, false); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("CheckFile(symlink) = %v, want ErrUnsafe", err)
	}
	if _, err := OpenFile(link, false); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("OpenFile(symlink) = %v, want ErrUnsafe", err)
	}
}

func TestCheckFileOtherOwner(t *testing.T) {
	needRoot(t)
	key := filepath.Join(t.TempDir(), "planted.pem")
	if err := os.WriteFile(key, []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(key, other, other); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenFile(key, true); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("OpenFile(planted by uid %d) = %v, want ErrUnsafe", other, err)
	}
}

func TestOpenFileFIFODoesNotBlock(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// Without O_NONBLOCK this open would wait for a writer forever.
	if _, err := OpenFile(fifo, false); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("OpenFile(fifo) = %v, want ErrUnsafe (not a regular file)", err)
	}
}

func TestCheckDirRefusesOthersSymlinkInStickyDir(t *testing.T) {
	needRoot(t)
	sticky := filepath.Join(t.TempDir(), "sticky")
	real := filepath.Join(t.TempDir(), "real")
	for _, d := range []string{sticky, real} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(sticky, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(sticky, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if err := CheckDir(link); err != nil {
		t.Fatalf("our own link in a sticky dir: %v", err)
	}
	// Another user's link in a sticky dir: that user may replace it later.
	if err := os.Lchown(link, other, other); err != nil {
		t.Fatal(err)
	}
	if err := CheckDir(link); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("CheckDir via uid %d's symlink = %v, want ErrUnsafe", other, err)
	}
}
