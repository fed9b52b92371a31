package unix

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/nodeward/nodeward/attestors/selector"
)

func TestMain(m *testing.M) {
	if os.Getenv("UNIX_TEST_CHILD") == "wait" {
		_, _ = io.Copy(io.Discard, os.Stdin)
		return
	}
	os.Exit(m.Run())
}

func has(sels []selector.Selector, want string) bool {
	for _, s := range sels {
		if s.String() == want {
			return true
		}
	}
	return false
}

func TestAttestSelf(t *testing.T) {
	a := New(Config{})
	sels, err := a.Attest(context.Background(), int32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	exe, _ = filepath.EvalSymlinks(exe)
	data, _ := os.ReadFile(exe)
	sum := sha256.Sum256(data)
	for _, want := range []string{
		fmt.Sprintf("unix:uid:%d", os.Geteuid()),
		fmt.Sprintf("unix:gid:%d", os.Getegid()),
		"unix:path:" + exe,
		"unix:sha256:" + hex.EncodeToString(sum[:]),
	} {
		if !has(sels, want) {
			t.Errorf("missing %s in %v", want, selector.Strings(sels))
		}
	}
	if os.Geteuid() == 0 && !has(sels, "unix:user:root") {
		t.Errorf("missing unix:user:root in %v", selector.Strings(sels))
	}
	a.SetHashing(false)
	sels, _ = a.Attest(context.Background(), int32(os.Getpid()))
	for _, s := range sels {
		if s.Key == "sha256" {
			t.Fatal("sha256 selector with hashing off")
		}
	}
}

func TestHashCachedAndBounded(t *testing.T) {
	var runs atomic.Int32
	a := New(Config{})
	a.hashRun = func() { runs.Add(1) }
	for range 3 {
		if _, err := a.Attest(context.Background(), int32(os.Getpid())); err != nil {
			t.Fatal(err)
		}
	}
	if runs.Load() != 1 {
		t.Fatalf("binary hashed %d times, want 1 (cached by dev+inode+size+mtime)", runs.Load())
	}
	small := New(Config{MaxHashBytes: 1024})
	sels, err := small.Attest(context.Background(), int32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sels {
		if s.Key == "sha256" {
			t.Fatal("sha256 selector for a binary over MaxHashBytes")
		}
	}
}

func TestAttestOtherUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start a child as uid 65534 (CI runs as root)")
	}
	// The test binary's own directory may be closed to other uids: copy it.
	dir, err := os.MkdirTemp("", "unix-attestor-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	_ = os.Chmod(dir, 0o755)
	self, _ := os.Executable()
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "unix.test")
	if err := os.WriteFile(exe, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = []string{"UNIX_TEST_CHILD=wait"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{65534, 100}}}
	stdin, _ := cmd.StdinPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stdin.Close(); _ = cmd.Wait() }()
	sels, err := New(Config{}).Attest(context.Background(), int32(cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"unix:uid:65534", "unix:gid:65534", "unix:user:nobody", "unix:supplementary-gid:100", "unix:path:" + exe} {
		if !has(sels, want) {
			t.Errorf("missing %s in %v", want, selector.Strings(sels))
		}
	}
}

func TestGoneProcess(t *testing.T) {
	_, err := New(Config{ProcRoot: t.TempDir()}).Attest(context.Background(), 12345)
	if !errors.Is(err, ErrProcessGone) {
		t.Fatalf("err = %v, want ErrProcessGone", err)
	}
}

func TestFakeProcTree(t *testing.T) {
	tests := []struct {
		name    string
		status  string
		want    []string
		wantErr bool
	}{
		{"no groups", "Name:\tx\nUid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\n", []string{"unix:uid:2", "unix:gid:6"}, false},
		{"groups", "Uid:\t1\t1\t1\t1\nGid:\t5\t5\t5\t5\nGroups:\t10 20 \n", []string{"unix:supplementary-gid:10", "unix:supplementary-gid:20"}, false},
		{"missing gid", "Uid:\t1\t1\t1\t1\n", nil, true},
		{"short uid", "Uid:\t1\nGid:\t1\t1\n", nil, true},
		{"bad number", "Uid:\t1\tx\nGid:\t1\t1\n", nil, true},
		{"bad group", "Uid:\t1\t1\nGid:\t1\t1\nGroups:\tz\n", nil, true},
	}
	for _, tt := range tests {
		root := t.TempDir()
		if err := os.MkdirAll(filepath.Join(root, "7"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "7", "status"), []byte(tt.status), 0o644); err != nil {
			t.Fatal(err)
		}
		sels, err := New(Config{ProcRoot: root}).Attest(context.Background(), 7)
		if tt.wantErr {
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("%s: err = %v, want ErrMalformed", tt.name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		for _, w := range tt.want {
			if !has(sels, w) {
				t.Errorf("%s: missing %s in %v", tt.name, w, strings.Join(selector.Strings(sels), " "))
			}
		}
		for _, s := range sels {
			if s.Key == "path" || s.Key == "sha256" {
				t.Errorf("%s: %s without an exe link", tt.name, s)
			}
		}
	}
}

func FuzzParseStatus(f *testing.F) {
	f.Add([]byte("Uid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\nGroups:\t1 2\n"))
	f.Add([]byte("Uid:\nGid:\t\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := parseStatus(data)
		if err == nil && !strings.Contains(string(data), "Uid:") {
			t.Fatalf("parsed %+v without a Uid line", st)
		}
	})
}

func BenchmarkAttestSelf(b *testing.B) {
	a := New(Config{})
	pid := int32(os.Getpid())
	if _, err := a.Attest(context.Background(), pid); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Attest(context.Background(), pid); err != nil {
			b.Fatal(err)
		}
	}
}
