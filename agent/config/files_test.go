package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// secret is text of a file that is not a nodeward file; no error may quote
// any of it.
const secret = "S3cr3tHash"

// TestUnrelatedFileNotQuoted: an entries_file (or config) that is some other
// file, parsing as YAML or not, gives FILE:LINE and a message without its
// content.
func TestUnrelatedFileNotQuoted(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"shadow":      "root:$6$salt$" + secret + ":19000:0:99999:7:::\ndaemon:*:1:0:99999:7:::\n",
		"keyvalue":    "password: " + secret + "\n",
		"second-line": "user: x\n" + secret + ": y\n",
		"anchor":      "a: *" + secret + "\n",
		"syntax":      "k: v\n" + secret + ": [unclosed\n",
		"alias":       "a: &" + secret + " x\nb: *" + secret + "\n",
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg := filepath.Join(dir, name+".yaml")
		if err := os.WriteFile(cfg, []byte("trust_domain: example.org\nentries_file: "+p+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		for how, load := range map[string]func() error{
			"entries_file": func() error { _, err := Load(cfg); return err },
			"LoadEntries":  func() error { _, err := LoadEntries(p); return err },
			"config":       func() error { _, err := Load(p); return err },
		} {
			err := load()
			if err == nil {
				t.Errorf("%s as %s: loaded", name, how)
				continue
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("%s as %s: error quotes the file: %v", name, how, err)
			}
			if !strings.Contains(err.Error(), p+":") {
				t.Errorf("%s as %s: error %q lacks FILE:LINE", name, how, err)
			}
		}
	}
	// A file that is an entries file keeps its precise messages.
	p := filepath.Join(dir, "typo.yaml")
	if err := os.WriteFile(p, []byte("entries: []\nentrys: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := LoadEntries(p)
	if want := p + `:2: unknown key "entrys"`; err == nil || err.Error() != want || !errors.Is(err, ErrUnknownKey) {
		t.Errorf("entries file typo: %v, want %s", err, want)
	}
}

// TestOnlyRegularFiles: a FIFO (which would block start for good), a
// directory or a device is refused at once; a world-writable file is
// refused; a symlink to a regular file (a ConfigMap mount) is followed.
func TestOnlyRegularFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	ww := filepath.Join(dir, "ww.yaml")
	if err := os.WriteFile(ww, []byte("entries: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(ww, 0o666); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		fifo:        "not a regular file (a named pipe)",
		dir:         "not a regular file (a directory)",
		"/dev/null": "not a regular file (a device)",
		ww:          "lets every user write it",
	} {
		done := make(chan error, 1)
		go func() { _, err := LoadEntries(name); done <- err }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: err = %v, want %q", name, err, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: read blocked", name)
		}
	}
	real := filepath.Join(dir, "real.yaml")
	if err := os.WriteFile(real, []byte("entries: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.yaml")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadEntries(link); err != nil {
		t.Errorf("symlinked entries file: %v", err)
	}
}
