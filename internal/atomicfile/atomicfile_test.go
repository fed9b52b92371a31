package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteReplacesWithMode(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "key.pem")
	if err := os.WriteFile(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(p, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil || string(b) != "new" {
		t.Fatalf("content = %q, %v", b, err)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode = %v, want 0600", st.Mode().Perm())
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("temp files left behind: %v", ents)
	}
}

func TestWriteMissingDir(t *testing.T) {
	if err := Write(filepath.Join(t.TempDir(), "no", "x"), []byte("x"), 0o600); err == nil {
		t.Fatal("want error for missing directory")
	}
}

func TestCleanTemps(t *testing.T) {
	dir := t.TempDir()
	// A real leftover: the temporary name Write uses.
	left := filepath.Join(dir, tempName("key.pem")+"4242")
	for _, n := range []string{left, filepath.Join(dir, ".key.pem.tmp-1x"), filepath.Join(dir, ".cert.pem.tmp-1"), filepath.Join(dir, "key.pem")} {
		if err := os.WriteFile(n, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(dir, "key.pem"), filepath.Join(dir, ".key.pem.tmp-5")); err != nil {
		t.Fatal(err)
	}
	removed, err := CleanTemps(dir, "key.pem")
	if err != nil || len(removed) != 1 || removed[0] != left {
		t.Fatalf("CleanTemps = %v, %v; want [%s]", removed, err, left)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 4 {
		t.Fatalf("left %v, want the 4 others", ents)
	}
}
