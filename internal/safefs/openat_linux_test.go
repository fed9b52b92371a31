package safefs

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestOpenDir: the walk on descriptors follows trusted symlinks (absolute
// and relative), creates missing directories, and refuses what CheckDir
// refuses: a group/other-writable directory and, as root, a directory or
// symlink of another uid.
func TestOpenDir(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, filepath.Join(dir, "abs")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real", filepath.Join(dir, "rel")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"abs/new/deeper", "rel/x", "real/../real/y"} {
		d, err := OpenDir(filepath.Join(dir, p), true)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		fi, err := d.Stat()
		_ = d.Close()
		if err != nil || !fi.IsDir() {
			t.Fatalf("%s: %v %v", p, fi, err)
		}
	}
	if _, err := os.Stat(filepath.Join(real, "new", "deeper")); err != nil {
		t.Fatalf("created through the symlink: %v", err)
	}
	if _, err := OpenDir(filepath.Join(dir, "missing"), false); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing without create: %v", err)
	}
	open := filepath.Join(dir, "open")
	if err := os.Mkdir(open, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{open, filepath.Join(open, "sub")} {
		if _, err := OpenDir(p, true); !errors.Is(err, ErrUnsafe) {
			t.Fatalf("%s: %v, want ErrUnsafe", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(open, "sub")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a directory was created below an unsafe one")
	}
	if os.Geteuid() != 0 {
		return
	}
	other := filepath.Join(dir, "other")
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(other, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenDir(filepath.Join(other, "x"), true); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("below a directory of another uid: %v, want ErrUnsafe", err)
	}
	link := filepath.Join(dir, "theirs")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(link, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenDir(link, false); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("symlink of another uid: %v, want ErrUnsafe", err)
	}
}
