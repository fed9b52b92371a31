package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nodeward/nodeward/internal/audit"
	"github.com/nodeward/nodeward/test/testutil"
)

// Issue 11, items 4, 6 and 7: what callers can make the audit trail write,
// which file it writes to, and that every lost record is counted — against
// the built binary.

const (
	floodEnv = "NODEWARD_E2E_VALIDATE_FLOOD" // socket,duration: run as the flooding child
	nobody   = 65534
)

// floodKid is the 1 KiB kid of the forged tokens; no part of it may reach
// the audit trail.
var floodKid = strings.Repeat("K", 1024)

// init turns the test binary into the flooding child when floodEnv is set:
// ValidateJWTSVID calls with a forged token, from 4 goroutines, for the given
// duration; it prints how many calls the agent answered.
func init() {
	v := os.Getenv(floodEnv)
	if v == "" {
		return
	}
	sock, d, _ := strings.Cut(v, ",")
	dur, err := time.ParseDuration(d)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	os.Exit(validateFlood(sock, dur))
}

func forgedToken(kid string) string {
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	exp := time.Now().Add(time.Hour).Unix()
	return enc(`{"alg":"ES256","typ":"JWT","kid":"`+kid+`"}`) + "." +
		enc(fmt.Sprintf(`{"sub":"spiffe://example.org/x","aud":["svc"],"exp":%d}`, exp)) + "." +
		base64.RawURLEncoding.EncodeToString(make([]byte, 64))
}

func validateFlood(sock string, dur time.Duration) int {
	// Every call runs to its answer (no call cut by the deadline), so that
	// the count matches what the agent saw.
	ctx, cancel := context.WithTimeout(context.Background(), dur+30*time.Second)
	defer cancel()
	end := time.Now().Add(dur)
	c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+sock))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	tok := forgedToken(floodKid)
	var answered atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for time.Now().Before(end) {
				_, err := c.ValidateJWTSVID(ctx, tok, "svc")
				if st, ok := status.FromError(err); !ok || st.Code() != codes.InvalidArgument {
					fmt.Fprintln(os.Stderr, "unexpected answer:", err)
					os.Exit(1)
				}
				answered.Add(1)
			}
		})
	}
	wg.Wait()
	fmt.Println(answered.Load())
	return 0
}

// scrape returns the value of one series (name with labels, as written in
// the exposition format) from the agent's /metrics; 0 when absent.
func scrape(t *testing.T, admin, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return 0
}

// auditLines returns the audit file's records that parse, and how many
// lines did not.
func auditLines(t *testing.T, p string) (recs []audit.Record, raw []string, bad int) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	for ln := range strings.Lines(string(b)) {
		var r audit.Record
		if !strings.HasSuffix(ln, "\n") || json.Unmarshal([]byte(ln), &r) != nil {
			bad++
			continue
		}
		recs = append(recs, r)
		raw = append(raw, ln)
	}
	return recs, raw, bad
}

// testEntries grants this test process (by uid and binary) an identity.
func testEntries(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("entries:\n  - spiffe_id: spiffe://example.org/test\n    selectors: [unix:uid:%d, \"unix:path:%s\"]\n", os.Geteuid(), exe)
}

func startAuditAgent(t *testing.T, dir, extra string) (admin, sock, auditLog string, a *testutil.Agent) {
	t.Helper()
	admin = freePort(t)
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", "admin_listen: "+admin+"\n"+extra)
	a = testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 10*time.Second)
	return admin, sock, filepath.Join(dir, "audit.log"), a
}

// A local user with no identity floods ValidateJWTSVID with tokens whose
// kid is 1 KiB: the audit file grows by a bounded amount, the drops are
// counted in audit_dropped records and the metric, and no kid text lands in
// the trail.
func TestAuditValidateFloodBounded(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the flooding caller as uid 65534")
	}
	dir := testutil.SocketDir(t)
	// The Workload API rate limit (limits.rate) would refuse most of the
	// flood before it reaches the audit trail: lift it to test the trail's.
	admin, sock, auditLog, _ := startAuditAgent(t, dir, "limits:\n  rate: 0\n")
	// The flooding child is this test binary, somewhere uid 65534 may run it.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "flood")
	copyExecutable(t, self, exe)
	st0, err := os.Stat(auditLog)
	if err != nil {
		t.Fatal(err)
	}
	const dur = 3 * time.Second
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), floodEnv+"="+sock+","+dur.String())
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	out, err := cmd.Output()
	elapsed := time.Since(start)
	if err != nil {
		t.Fatalf("flood: %v\n%s", err, stderr.Bytes())
	}
	calls, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil || calls < 500 {
		t.Fatalf("flood made %q calls (want at least 500 for the test to mean something): %v", out, err)
	}
	st1, err := os.Stat(auditLog)
	if err != nil {
		t.Fatal(err)
	}
	growth := st1.Size() - st0.Size()
	rate := float64(growth) / elapsed.Seconds()
	t.Logf("%d ValidateJWTSVID denials in %v from uid %d: audit file grew %d bytes (%.0f B/s)", calls, elapsed.Round(time.Millisecond), nobody, growth, rate)
	// Burst 50 + 10/s denials of ~400 bytes, and as many audit_dropped
	// records at most: well under 64 KiB in 3 s.
	if growth > 64<<10 {
		t.Errorf("audit file grew %d bytes during a %v flood (bound 64 KiB)", growth, dur)
	}
	recs, raw, bad := auditLines(t, auditLog)
	if bad != 0 {
		t.Errorf("%d audit lines do not parse", bad)
	}
	var denials, summaries int
	var droppedInTrail uint64
	for i, r := range recs {
		if strings.Contains(raw[i], floodKid[:64]) {
			t.Fatalf("kid text in the audit trail: %.200s", raw[i])
		}
		if len(raw[i]) > audit.MaxRecordSize {
			t.Errorf("record of %d bytes", len(raw[i]))
		}
		switch {
		case r.Event == "validate" && r.Decision == "deny" && r.Caller != nil && r.Caller.UID == nobody:
			denials++
			if r.Reason != "unknown_key_id" {
				t.Errorf("deny reason %q, want unknown_key_id", r.Reason)
			}
		case r.Event == "audit_dropped" && r.UID != nil && *r.UID == nobody:
			summaries++
			droppedInTrail += r.Count
			if r.Count == 0 || r.Since == nil || r.Reason != "rate_limited" {
				t.Errorf("audit_dropped record: %s", raw[i])
			}
		}
	}
	dropped := scrape(t, admin, `nodeward_audit_dropped_total{reason="rate_limited"}`)
	t.Logf("written: %d denials, %d audit_dropped records (%d counted); metric %v", denials, summaries, droppedInTrail, dropped)
	if summaries == 0 || droppedInTrail == 0 {
		t.Errorf("no audit_dropped record for uid %d", nobody)
	}
	if int(dropped)+denials != calls {
		t.Errorf("nodeward_audit_dropped_total = %v, denials written %d: together %v, want the %d calls", dropped, denials, int(dropped)+denials, calls)
	}
	if droppedInTrail > uint64(dropped) {
		t.Errorf("audit_dropped records count %d, more than the metric's %v", droppedInTrail, dropped)
	}
	if w := scrape(t, admin, "nodeward_audit_write_errors_total"); w != 0 {
		t.Errorf("write errors %v", w)
	}
}

// An entitled caller asks for a JWT-SVID with 32 audiences of 1 KiB: its
// issue record stays within the record bound and says what it left out.
func TestAuditIssueRecordBounded(t *testing.T) {
	dir := testutil.SocketDir(t)
	_, sock, auditLog, _ := startAuditAgent(t, dir, testEntries(t))
	aud := make([]string, 32)
	for i := range aud {
		aud[i] = fmt.Sprintf("%02d", i) + strings.Repeat("a", 1022)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud[0], ExtraAudiences: aud[1:]}, workloadapi.WithAddr("unix://"+sock)); err != nil {
		t.Fatal(err)
	}
	recs, raw, _ := auditLines(t, auditLog)
	found := false
	for i, r := range recs {
		if r.Event != "issue" || r.Kind != "jwt" {
			continue
		}
		found = true
		t.Logf("issue record: %d bytes, %d audiences listed, %d omitted", len(raw[i]), len(r.Audience), r.Omitted)
		if len(raw[i]) > audit.MaxRecordSize {
			t.Errorf("issue record of %d bytes > %d", len(raw[i]), audit.MaxRecordSize)
		}
		if !r.Truncated || r.Omitted == 0 || len(r.Audience)+r.Omitted != 32 || !strings.HasPrefix(r.Audience[0], "00a") {
			t.Errorf("issue record not marked: truncated=%v, %d listed, %d omitted", r.Truncated, len(r.Audience), r.Omitted)
		}
	}
	if !found {
		t.Fatal("no jwt issue record")
	}
}

// waitExit waits for a process that should refuse to start; it fails the
// test (and kills it) when it serves instead.
func waitExit(t *testing.T, cmd *exec.Cmd, within time.Duration) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		return 0
	case <-time.After(within):
		_ = cmd.Process.Kill()
		<-done
		t.Fatal("the agent started")
		return 0
	}
}

// The agent refuses to start on an audit_log that is a symlink, another
// user's file, or a file others may write — with an error that says so.
func TestAuditLogUnsafeFileRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, p string)
		want  string
	}{
		{"symlink", func(t *testing.T, p string) {
			target := filepath.Join(filepath.Dir(p), "elsewhere")
			if err := os.WriteFile(target, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
		}, "is a symlink"},
		{"owned by uid 65534", func(t *testing.T, p string) {
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(p, nobody, nobody); err != nil {
				t.Fatal(err)
			}
		}, "is owned by uid 65534"},
		{"mode 0666", func(t *testing.T, p string) {
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, 0o666); err != nil {
				t.Fatal(err)
			}
		}, "is open to group or others"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := testutil.SocketDir(t)
			cfg, _ := testutil.WriteConfig(t, dir, "example.org", "")
			p := filepath.Join(dir, "audit.log")
			tc.plant(t, p)
			cmd := exec.Command(bin, "agent", "--config", cfg)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			code := waitExit(t, cmd, 10*time.Second)
			if code == 0 || !strings.Contains(stderr.String(), "audit log") || !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("exit %d, stderr %q; want a failure naming the audit log and %q", code, stderr.String(), tc.want)
			}
			if b, _ := os.ReadFile(filepath.Join(dir, "elsewhere")); len(b) != 0 {
				t.Errorf("the symlink's target was written: %q", b)
			}
		})
	}
}

// Log rotation moved the file and someone planted a symlink in its place:
// SIGUSR1 keeps the old file, logs and counts the refusal.
func TestAuditReopenRefusesSymlink(t *testing.T) {
	dir := testutil.SocketDir(t)
	admin, sock, auditLog, a := startAuditAgent(t, dir, testEntries(t))
	fetch := func(aud string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud}, workloadapi.WithAddr("unix://"+sock)); err != nil {
			t.Fatal(err)
		}
	}
	fetch("before")
	if err := os.Rename(auditLog, auditLog+".1"); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "elsewhere")
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, auditLog); err != nil {
		t.Fatal(err)
	}
	if err := a.Cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for scrape(t, admin, "nodeward_audit_reopen_errors_total") != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("reopen error not counted; log:\n%s", a.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitLog(t, a, "reopen audit log")
	if !strings.Contains(a.Log(), "symlink") {
		t.Errorf("the reopen error does not say why")
	}
	fetch("after")
	if b, _ := os.ReadFile(target); len(b) != 0 {
		t.Fatalf("the symlink's target was written: %q", b)
	}
	recs, _, _ := auditLines(t, auditLog+".1")
	var auds []string
	for _, r := range recs {
		if r.Event == "issue" {
			auds = append(auds, r.Audience...)
		}
	}
	if strings.Join(auds, ",") != "before,after" {
		t.Errorf("issue records in the kept file: %v, want before and after", auds)
	}
}

// On a full disk every lost record is counted in
// nodeward_audit_write_errors_total: a real 64 KiB tmpfs, filled up, while
// an entitled caller fetches JWT-SVIDs (one issue record each).
func TestAuditWriteErrorsCountedOnFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	dir := testutil.SocketDir(t)
	logs := filepath.Join(dir, "logs")
	if err := os.Mkdir(logs, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", logs).CombinedOutput(); err != nil {
		t.Skipf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", logs).Run() })
	auditLog := filepath.Join(logs, "audit.log")
	admin := freePort(t)
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", "admin_listen: "+admin+"\n"+testEntries(t))
	// WriteConfig points audit_log at dir/audit.log: move it onto the tmpfs.
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b = bytes.Replace(b, []byte("audit_log: "+filepath.Join(dir, "audit.log")), []byte("audit_log: "+auditLog), 1)
	if err := os.WriteFile(cfg, b, 0o644); err != nil {
		t.Fatal(err)
	}
	a := testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+sock))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fetch := func() {
		t.Helper()
		if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "svc"}); err != nil {
			t.Fatal(err)
		}
	}
	fetch() // mints and caches: from now on one issue record per call, nothing else
	// Fill the tmpfs.
	filler, err := os.Create(filepath.Join(logs, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 512)
	for {
		if _, err := filler.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	_, _ = filler.Write(chunk[:1]) // and any last bytes
	_ = filler.Close()
	recs0, _, _ := auditLines(t, auditLog)
	lost0 := scrape(t, admin, "nodeward_audit_write_errors_total")
	const n = 50
	for range n {
		fetch()
	}
	recs1, _, bad := auditLines(t, auditLog)
	lost := scrape(t, admin, "nodeward_audit_write_errors_total") - lost0
	written := len(recs1) - len(recs0)
	t.Logf("disk full: %d issue records attempted, %d written whole, %d partial lines; nodeward_audit_write_errors_total +%v", n, written, bad, lost)
	if lost == 0 || int(lost) != n-written {
		t.Fatalf("nodeward_audit_write_errors_total rose by %v; %d of %d records were not written", lost, n-written, n)
	}
	if !strings.Contains(a.Log(), "audit log write failed") {
		t.Errorf("lost records not logged")
	}
	// Space again: the next record is whole and on a line of its own.
	if err := os.Remove(filepath.Join(logs, "filler")); err != nil {
		t.Fatal(err)
	}
	fetch()
	recs2, raw2, _ := auditLines(t, auditLog)
	if len(recs2) != len(recs1)+1 || recs2[len(recs2)-1].Event != "issue" {
		t.Fatalf("after freeing space: %d records (want %d), last %q", len(recs2), len(recs1)+1, raw2[len(raw2)-1])
	}
	if got := scrape(t, admin, "nodeward_audit_write_errors_total") - lost0; got != lost {
		t.Errorf("write errors went from %v to %v with space available", lost, got)
	}
}
