//go:build linux

package unix

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/nodeward/nodeward/attestors/selector"
)

const (
	childEnv = "UNIX_TEST_CHILD"
	pidEnv   = "UNIX_TEST_PID"
)

// TestMain doubles as the child process: "wait" waits for stdin to close;
// "attest" attests the pid in pidEnv and prints one selector per line.
func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "wait":
		_, _ = io.Copy(io.Discard, os.Stdin)
		return
	case "attest":
		pid, _ := strconv.Atoi(os.Getenv(pidEnv))
		sels, err := New(Config{}).Attest(context.Background(), int32(pid))
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println(strings.Join(selector.Strings(sels), "\n"))
		return
	}
	goleak.VerifyTestMain(m)
}

func strs(sels []selector.Selector) []string { return selector.Strings(sels) }

func has(sels []selector.Selector, want string) bool {
	return slices.Contains(strs(sels), want)
}

func hasKey(sels []selector.Selector, key string) bool {
	return slices.ContainsFunc(sels, func(s selector.Selector) bool { return s.Key == key })
}

func sha256Hex(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func selfExe(t testing.TB) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exe, err = filepath.EvalSymlinks(exe)
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// logBuffer returns a debug-level logger writing into the returned buffer.
func logBuffer() (*slog.Logger, *bytes.Buffer) {
	var buf bytes.Buffer
	return slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), &buf
}

func TestAttestSelf(t *testing.T) {
	sels, err := New(Config{}).Attest(context.Background(), int32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	uid, gid := strconv.Itoa(os.Geteuid()), strconv.Itoa(os.Getegid())
	exe := selfExe(t)
	want := []string{"unix:uid:" + uid, "unix:gid:" + gid, "unix:path:" + exe, "unix:sha256:" + sha256Hex(t, exe)}
	if u, err := user.LookupId(uid); err == nil {
		want = append(want, "unix:user:"+u.Username)
	}
	if g, err := user.LookupGroupId(gid); err == nil {
		want = append(want, "unix:group:"+g.Name)
	}
	groups, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range groups {
		want = append(want, "unix:supplementary-gid:"+strconv.Itoa(g))
	}
	slices.Sort(want)
	got := strs(sels)
	if !slices.Equal(got, want) {
		t.Fatalf("selectors:\n got  %v\n want %v", got, want)
	}
	if !slices.IsSorted(got) {
		t.Errorf("not sorted: %v", got)
	}
}

func TestSetHashing(t *testing.T) {
	a := New(Config{})
	if !a.MayBlock() {
		t.Error("MayBlock false with hashing on")
	}
	a.SetHashing(false)
	if a.MayBlock() {
		t.Error("MayBlock true with hashing off")
	}
	sels, err := a.Attest(context.Background(), int32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	if hasKey(sels, "sha256") || !hasKey(sels, "path") {
		t.Fatalf("hashing off: %v, want a path and no sha256", strs(sels))
	}
	a.SetHashing(true)
	if sels, _ := a.Attest(context.Background(), int32(os.Getpid())); !hasKey(sels, "sha256") {
		t.Fatalf("hashing back on: no sha256 in %v", strs(sels))
	}
}

func TestHashCached(t *testing.T) {
	var runs atomic.Int32
	a := New(Config{})
	a.hashRun = func() { runs.Add(1) }
	var first []string
	for i := range 3 {
		sels, err := a.Attest(context.Background(), int32(os.Getpid()))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = strs(sels)
		} else if !slices.Equal(strs(sels), first) {
			t.Fatalf("call %d: %v, want %v", i, strs(sels), first)
		}
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("binary hashed %d times, want 1 (cached)", n)
	}
}

// fakeProc builds ProcRoot/7/status, and ProcRoot/7/exe -> exeTarget when
// exeTarget is not empty.
func fakeProc(t *testing.T, status, exeTarget string) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "7")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "status"), []byte(status), 0o644); err != nil {
		t.Fatal(err)
	}
	if exeTarget != "" {
		if err := os.Symlink(exeTarget, filepath.Join(dir, "exe")); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

const okStatus = "Name:\tx\nUid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\nGroups:\t10 20 \nNSpid:\t7\n"

func TestFakeProcStatus(t *testing.T) {
	tests := []struct {
		name   string
		status string
		want   []string // exact, with names resolved to nothing
		err    error
	}{
		{"effective ids, groups", okStatus, []string{"unix:gid:6", "unix:supplementary-gid:10", "unix:supplementary-gid:20", "unix:uid:2"}, nil},
		{"no Groups line", "Uid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\n", []string{"unix:gid:6", "unix:uid:2"}, nil},
		{"empty Groups line", "Uid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\nGroups:\t\n", []string{"unix:gid:6", "unix:uid:2"}, nil},
		{"no final newline", "Gid:\t0\t0\t0\t0\nUid:\t0\t4294967295\t0\t0", []string{"unix:gid:0", "unix:uid:4294967295"}, nil},
		{"lines without colon ignored", "junk\n\nUid:\t1\t1\t1\t1\nGid:\t1\t1\t1\t1\n", []string{"unix:gid:1", "unix:uid:1"}, nil},
		{"empty file", "", nil, ErrMalformed},
		{"missing Gid", "Uid:\t1\t1\t1\t1\n", nil, ErrMalformed},
		{"missing Uid", "Gid:\t1\t1\t1\t1\n", nil, ErrMalformed},
		{"short Uid", "Uid:\t1\nGid:\t1\t1\t1\t1\n", nil, ErrMalformed},
		{"non-numeric", "Uid:\t1\tx\t1\t1\nGid:\t1\t1\t1\t1\n", nil, ErrMalformed},
		{"negative", "Uid:\t1\t-1\t1\t1\nGid:\t1\t1\t1\t1\n", nil, ErrMalformed},
		{"plus sign", "Uid:\t1\t+1\t1\t1\nGid:\t1\t1\t1\t1\n", nil, ErrMalformed},
		{"leading zero", "Uid:\t1\t01\t1\t1\nGid:\t1\t1\t1\t1\n", nil, ErrMalformed},
		{"overflow", "Uid:\t1\t4294967296\t1\t1\nGid:\t1\t1\t1\t1\n", nil, ErrMalformed},
		{"repeated Uid", "Uid:\t1\t1\t1\t1\nUid:\t0\t0\t0\t0\nGid:\t1\t1\t1\t1\n", nil, ErrMalformed},
		{"repeated Groups", "Uid:\t1\t1\t1\t1\nGid:\t1\t1\t1\t1\nGroups:\t1\nGroups:\t0\n", nil, ErrMalformed},
		{"bad group", "Uid:\t1\t1\t1\t1\nGid:\t1\t1\t1\t1\nGroups:\t3 z\n", nil, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := New(Config{ProcRoot: fakeProc(t, tt.status, "")})
			a.names.resolve = func(byte, string) (string, bool) { return "", false }
			sels, err := a.Attest(context.Background(), 7)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err = %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := strs(sels); !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestFakeProcExe(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(bin, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	sum := sha256Hex(t, bin)
	gone := filepath.Join(t.TempDir(), "gone")
	weird := filepath.Join(t.TempDir(), "new\nline")
	if err := os.WriteFile(weird, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		target string
		cfg    Config
		want   []string
		absent []string
		log    string
	}{
		{name: "path and sha256", target: bin, want: []string{"unix:path:" + bin, "unix:sha256:" + sum}},
		{name: "over MaxHashBytes", target: bin, cfg: Config{MaxHashBytes: 4},
			want: []string{"unix:path:" + bin}, absent: []string{"sha256"}, log: "larger than the hash limit"},
		{name: "MaxHashBytes exactly", target: bin, cfg: Config{MaxHashBytes: 12},
			want: []string{"unix:sha256:" + sum}},
		{name: "HashTimeout exceeded", target: bin, cfg: Config{HashTimeout: time.Nanosecond},
			want: []string{"unix:path:" + bin}, absent: []string{"sha256"}, log: "took too long"},
		{name: "dangling exe link", target: gone, want: []string{"unix:path:" + gone}, absent: []string{"sha256"}},
		{name: "not a regular file", target: t.TempDir(), absent: []string{"sha256"}},
		{name: "path with a control character", target: weird,
			want: []string{"unix:sha256:" + sha256Hex(t, weird)}, absent: []string{"path"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log, buf := logBuffer()
			cfg := tt.cfg
			cfg.ProcRoot, cfg.Logger = fakeProc(t, okStatus, tt.target), log
			sels, err := New(cfg).Attest(context.Background(), 7)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !has(sels, w) {
					t.Errorf("missing %q in %q", w, strs(sels))
				}
			}
			for _, k := range tt.absent {
				if hasKey(sels, k) {
					t.Errorf("unexpected %s selector in %q", k, strs(sels))
				}
			}
			if tt.log != "" && !strings.Contains(buf.String(), tt.log) {
				t.Errorf("log %q does not mention %q", buf.String(), tt.log)
			}
		})
	}
}

// Rewriting a binary in place, same size, mtime put back, must not be
// served the old hash: ctime is part of the cache key.
func TestHashCacheKeyChangesOnRewrite(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(bin, []byte("good binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int32
	a := New(Config{ProcRoot: fakeProc(t, okStatus, bin)})
	a.hashRun = func() { runs.Add(1) }
	attest := func() []selector.Selector {
		t.Helper()
		sels, err := a.Attest(context.Background(), 7)
		if err != nil {
			t.Fatal(err)
		}
		return sels
	}
	attest()
	if sels := attest(); !has(sels, "unix:sha256:"+sha256Hex(t, bin)) || runs.Load() != 1 {
		t.Fatalf("before rewrite: runs %d, %v", runs.Load(), strs(sels))
	}
	f, err := os.OpenFile(bin, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("evil binary"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(bin, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	if st2, _ := os.Stat(bin); st2.Size() != st.Size() || !st2.ModTime().Equal(st.ModTime()) {
		t.Fatal("test setup: size or mtime differ")
	}
	if sels := attest(); !has(sels, "unix:sha256:"+sha256Hex(t, bin)) || runs.Load() != 2 {
		t.Fatalf("after rewrite: runs %d, %v, want a fresh hash of the new content", runs.Load(), strs(sels))
	}
}

func TestCanceledContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	a := New(Config{})
	if _, err := a.Attest(ctx, int32(os.Getpid())); !errors.Is(err, context.Canceled) {
		t.Fatalf("hashing with a canceled context: %v, want context.Canceled", err)
	}
	a.SetHashing(false)
	if _, err := a.Attest(ctx, int32(os.Getpid())); err != nil {
		t.Fatalf("no hashing: %v", err)
	}
}

func TestGoneProcess(t *testing.T) {
	// A reaped child: its PID is free (and unlikely to be reused this soon).
	cmd := exec.Command(selfExe(t))
	cmd.Env = []string{childEnv + "=wait", "GORACE=atexit_sleep_ms=0"}
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		a    *Attestor
		pid  int32
	}{
		{"empty fake proc", New(Config{ProcRoot: t.TempDir()}), 12345},
		{"reaped child", New(Config{}), int32(cmd.Process.Pid)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tt.a.Attest(context.Background(), tt.pid); !errors.Is(err, ErrProcessGone) {
				t.Fatalf("err = %v, want ErrProcessGone", err)
			}
		})
	}
	for _, pid := range []int32{0, -1} {
		if _, err := New(Config{}).Attest(context.Background(), pid); err == nil || errors.Is(err, ErrProcessGone) {
			t.Errorf("pid %d: err = %v, want an invalid-pid error", pid, err)
		}
	}
}

func TestNameCache(t *testing.T) {
	n := newNames()
	now := time.Unix(1000, 0)
	n.now = func() time.Time { return now }
	calls := 0
	n.resolve = func(kind byte, id string) (string, bool) {
		calls++
		if kind == kindUser && id == "0" {
			return "root", true
		}
		return "", false
	}
	check := func(kind byte, id, wantName string, wantOK bool, wantCalls int) {
		t.Helper()
		name, ok := n.lookup(kind, id)
		if name != wantName || ok != wantOK || calls != wantCalls {
			t.Fatalf("lookup(%c, %s) = %q %v after %d resolves, want %q %v after %d",
				kind, id, name, ok, calls, wantName, wantOK, wantCalls)
		}
	}
	check(kindUser, "0", "root", true, 1)
	check(kindUser, "0", "root", true, 1) // cached
	check(kindGroup, "0", "", false, 2)   // groups are keyed apart
	check(kindGroup, "0", "", false, 2)   // unknown ids are cached too
	now = now.Add(nameTTL - time.Nanosecond)
	check(kindUser, "0", "root", true, 2) // still fresh
	now = now.Add(time.Nanosecond)
	check(kindUser, "0", "root", true, 3) // expired
	for i := range maxNames {
		n.lookup(kindUser, strconv.Itoa(1000+i))
	}
	if len(n.m) > maxNames {
		t.Fatalf("name cache holds %d entries, bound %d", len(n.m), maxNames)
	}
}

// copyExe copies the test binary into a fresh 0755 directory that other
// uids can reach (t.TempDir's parent may be 0700).
func copyExe(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "unix-attestor-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(selfExe(t))
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "unix.test")
	if err := os.WriteFile(exe, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return exe
}

// startChild starts exe in "wait" mode; it runs until the test ends.
func startChild(t *testing.T, exe string, cred *syscall.Credential) int32 {
	t.Helper()
	cmd := exec.Command(exe)
	cmd.Env = []string{childEnv + "=wait", "GORACE=atexit_sleep_ms=0"}
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	// Start returns once the child has exec'd exe.
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stdin.Close(); _ = cmd.Wait() })
	return int32(cmd.Process.Pid)
}

// A binary removed or replaced after exec: the path carries " (deleted)"
// and the hash is that of the running binary, not of the new file.
func TestReplacedBinary(t *testing.T) {
	for _, replace := range []bool{false, true} {
		t.Run(fmt.Sprintf("replace=%v", replace), func(t *testing.T) {
			exe := copyExe(t)
			orig := sha256Hex(t, exe)
			pid := startChild(t, exe, nil)
			if replace {
				tmp := exe + ".new"
				if err := os.WriteFile(tmp, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(tmp, exe); err != nil {
					t.Fatal(err)
				}
			} else if err := os.Remove(exe); err != nil {
				t.Fatal(err)
			}
			sels, err := New(Config{}).Attest(context.Background(), pid)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range []string{"unix:path:" + exe + " (deleted)", "unix:sha256:" + orig} {
				if !has(sels, w) {
					t.Errorf("missing %s in %v", w, strs(sels))
				}
			}
			if has(sels, "unix:path:"+exe) {
				t.Errorf("the running binary matches the new file's path: %v", strs(sels))
			}
		})
	}
}

func TestAttestOtherUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start a child as uid 65534 (CI runs as root)")
	}
	exe := copyExe(t)
	pid := startChild(t, exe, &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{65534, 100}})
	sels, err := New(Config{}).Attest(context.Background(), pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"unix:uid:65534", "unix:gid:65534", "unix:user:nobody",
		"unix:supplementary-gid:65534", "unix:supplementary-gid:100",
		"unix:path:" + exe, "unix:sha256:" + sha256Hex(t, exe),
	} {
		if !has(sels, want) {
			t.Errorf("missing %s in %v", want, strs(sels))
		}
	}
	if has(sels, "unix:uid:0") {
		t.Errorf("root's uid in %v", strs(sels))
	}
}

// An unprivileged agent attesting another user's process cannot read its
// exe: path and sha256 are left out (fail closed), the rest still works.
func TestUnprivilegedAgent(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the attestor as uid 65534 against a root process")
	}
	cmd := exec.Command(copyExe(t))
	cmd.Env = []string{childEnv + "=attest", pidEnv + "=" + strconv.Itoa(os.Getpid()), "GORACE=atexit_sleep_ms=0"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("attestor as uid 65534: %v: %s", err, out)
	}
	lines := strings.Fields(string(out))
	if !slices.Contains(lines, "unix:uid:0") {
		t.Errorf("missing unix:uid:0 in %q", lines)
	}
	for _, l := range lines {
		if strings.HasPrefix(l, "unix:path:") || strings.HasPrefix(l, "unix:sha256:") {
			t.Errorf("unprivileged attestor produced %s", l)
		}
	}
}

// FuzzParseStatus: parseStatus never panics, and what it accepts survives
// a round trip through the kernel's format.
func FuzzParseStatus(f *testing.F) {
	f.Add([]byte(okStatus))
	f.Add([]byte("Uid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\nGroups:\t1 2\n"))
	f.Add([]byte("Uid:\nGid:\t\n"))
	f.Add([]byte("Uid:\t0\t0\nGid:\t0\t0\nGroups:\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := parseStatus(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if !bytes.Contains(data, []byte("Uid:")) || !bytes.Contains(data, []byte("Gid:")) {
			t.Fatalf("parsed %+v without Uid and Gid lines", st)
		}
		var b strings.Builder
		fmt.Fprintf(&b, "Uid:\t9\t%d\t9\t9\nGid:\t9\t%d\t9\t9\nGroups:\t", st.UID, st.GID)
		for _, g := range st.Groups {
			fmt.Fprintf(&b, "%d ", g)
		}
		b.WriteString("\n")
		again, err := parseStatus([]byte(b.String()))
		if err != nil {
			t.Fatalf("re-rendered %q: %v", b.String(), err)
		}
		if again.UID != st.UID || again.GID != st.GID || !slices.Equal(again.Groups, st.Groups) {
			t.Fatalf("round trip %+v -> %+v", st, again)
		}
	})
}

// BenchmarkAttestSelf measures one attestation with the hash cached.
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

// BenchmarkAttestSelfNoHash measures one attestation with hashing off.
func BenchmarkAttestSelfNoHash(b *testing.B) {
	a := New(Config{})
	a.SetHashing(false)
	pid := int32(os.Getpid())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Attest(context.Background(), pid); err != nil {
			b.Fatal(err)
		}
	}
}
