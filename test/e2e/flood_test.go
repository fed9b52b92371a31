package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nodeward/nodeward/test/testutil"
)

// Issue 11, items 3 and 22: what one caller can make the agent hold
// (connections, streams, JWT-SVID cache bytes, file descriptors), against
// the built binary. The flooding caller is this test binary re-executed as
// uid 65534 (testutil.FloodChild); the well-behaved caller is the test process.

// rssBound is the agent's memory budget under any flood (issue 11 item 3).
const rssBound = 64 << 20

func init() { testutil.FloodChild() }

// startFlood starts a flooding caller as uid 65534 (see testutil.FloodChild).
func startFlood(t *testing.T, dir, mode, sock string, n int) (*testutil.Flood, string) {
	t.Helper()
	return testutil.StartFlood(t, dir, mode, sock, n, nobody)
}

// procStatus returns a field of /proc/PID/status in bytes (VmRSS, VmHWM).
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for ln := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(ln, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// floodAgent starts an agent granting the test process (uid 0 and its
// binary) and uid 65534 an identity, with extra config.
func floodAgent(t *testing.T, extra string) (dir, admin, sock string, a *testutil.Agent) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the flooding caller as uid 65534")
	}
	dir = testutil.SocketDir(t)
	admin = freePort(t)
	entries := testEntries(t) + fmt.Sprintf("  - spiffe_id: spiffe://example.org/flood\n    selectors: [unix:uid:%d]\n", nobody)
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", "admin_listen: "+admin+"\n"+extra+entries)
	a = testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 10*time.Second)
	return dir, admin, sock, a
}

// wellBehaved fetches an X.509-SVID and a JWT-SVID as the test process,
// within a deadline.
func wellBehaved(t *testing.T, sock string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+sock))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sv, err := c.FetchX509SVID(ctx)
	if err != nil {
		t.Fatalf("well-behaved caller: FetchX509SVID: %v", err)
	}
	if sv.ID.String() != "spiffe://example.org/test" {
		t.Fatalf("well-behaved caller got %s", sv.ID)
	}
	if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "svc"}); err != nil {
		t.Fatalf("well-behaved caller: FetchJWTSVID: %v", err)
	}
}

// pollMetric polls series on the admin listener until ok(value) or the
// deadline passes, and returns the last value.
func pollMetric(t *testing.T, admin, series string, within time.Duration, ok func(float64) bool) float64 {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		v := scrape(t, admin, series)
		if ok(v) || time.Now().After(deadline) {
			return v
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFloodIdleConnsFromNoIdentityUID: 4,000 connections that never call,
// from one uid, hold at most max_conns_per_uid slots (the rest are closed at
// accept and counted), are closed after idle_timeout, and cost the agent
// little memory; a caller of another uid is served throughout.
func TestFloodIdleConnsFromNoIdentityUID(t *testing.T) {
	dir, admin, sock, a := floodAgent(t, "limits:\n  idle_timeout: 3s\n")
	const n = 4000
	_, line := startFlood(t, dir, "idle", sock, n)
	t.Logf("flood: %s", line)
	refused := pollMetric(t, admin, `nodeward_workload_api_limited_total{reason="max_conns_per_uid"}`, 30*time.Second,
		func(v float64) bool { return v >= n-128 })
	if refused < n-128 {
		t.Errorf("refused over max_conns_per_uid: %v, want at least %d", refused, n-128)
	}
	if open := scrape(t, admin, "nodeward_workload_api_connections"); open > 128+2 {
		t.Errorf("%v connections open, want at most 128 of the flooding uid", open)
	}
	wellBehaved(t, sock)
	// Connections that never call are closed after idle_timeout.
	if open := pollMetric(t, admin, "nodeward_workload_api_connections", 30*time.Second, func(v float64) bool { return v == 0 }); open != 0 {
		t.Errorf("%v idle connections still open after idle_timeout", open)
	}
	hwm := procStatus(t, a.Cmd.Process.Pid, "VmHWM")
	t.Logf("agent peak RSS %d MiB", hwm>>20)
	if hwm > rssBound {
		t.Errorf("agent peak RSS %d MiB, bound %d MiB", hwm>>20, rssBound>>20)
	}
}

// TestFloodStreamsOnOneConn: 20,000 streams on one connection; the agent
// serves at most max_streams_per_conn of them at a time (the rest wait in
// the client), stays within its memory budget and serves another caller.
func TestFloodStreamsOnOneConn(t *testing.T) {
	dir, admin, sock, a := floodAgent(t, "")
	_, line := startFlood(t, dir, "streams", sock, 20000)
	t.Logf("flood: %s", line)
	wellBehaved(t, sock)
	open := scrape(t, admin, `nodeward_workload_api_open_streams{rpc="FetchX509SVID"}`)
	if open > 64 {
		t.Errorf("%v streams open on the flooding connection, want at most 64", open)
	}
	hwm := procStatus(t, a.Cmd.Process.Pid, "VmHWM")
	t.Logf("agent: %v open streams, peak RSS %d MiB", open, hwm>>20)
	if hwm > rssBound {
		t.Errorf("agent peak RSS %d MiB, bound %d MiB", hwm>>20, rssBound>>20)
	}
}

// TestFloodStreamsPerUID: streams of one uid over several connections stop
// at max_streams_per_uid with ResourceExhausted, counted.
func TestFloodStreamsPerUID(t *testing.T) {
	_, admin, sock, _ := floodAgent(t, "limits:\n  max_streams_per_uid: 10\n  max_streams_per_conn: 64\n")
	cc, ctx, err := testutil.RawClient(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := workload.NewSpiffeWorkloadAPIClient(cc)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var codesSeen []codes.Code
	for range 12 {
		s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
		if err == nil {
			_, err = s.Recv()
		}
		codesSeen = append(codesSeen, status.Code(err))
	}
	for i, code := range codesSeen {
		want := codes.OK
		if i >= 10 {
			want = codes.ResourceExhausted
		}
		if code != want {
			t.Errorf("stream %d: %v, want %v", i, code, want)
		}
	}
	if v := scrape(t, admin, `nodeward_workload_api_limited_total{reason="max_streams_per_uid"}`); v != 2 {
		t.Errorf("limited max_streams_per_uid = %v, want 2", v)
	}
}

// TestFloodJWTDistinctAudiences: an entitled caller asks for JWT-SVIDs of
// 32 distinct 1 KiB audiences, 2,000 times; the JWT-SVID cache is bounded
// by bytes, so the agent stays within its memory budget. The rate limit,
// which would refuse most of these calls, is lifted to test the cache alone.
func TestFloodJWTDistinctAudiences(t *testing.T) {
	dir, _, sock, a := floodAgent(t, "limits:\n  rate: 0\n")
	_, line := startFlood(t, dir, "jwt", sock, 2000)
	t.Logf("flood: %s", line)
	var ok, exhausted int
	if _, err := fmt.Sscanf(line, "DONE %d %d", &ok, &exhausted); err != nil || ok < 500 {
		t.Fatalf("flood answered %q; want at least 500 SVIDs for the test to mean something", line)
	}
	wellBehaved(t, sock)
	hwm := procStatus(t, a.Cmd.Process.Pid, "VmHWM")
	t.Logf("agent peak RSS %d MiB after %d JWT-SVIDs (%d refused)", hwm>>20, ok, exhausted)
	if hwm > rssBound {
		t.Errorf("agent peak RSS %d MiB, bound %d MiB", hwm>>20, rssBound>>20)
	}
}

// TestFloodRateLimitPerUID: calls beyond rate+burst of one uid get
// ResourceExhausted, counted; another uid is not throttled.
func TestFloodRateLimitPerUID(t *testing.T) {
	dir, admin, sock, _ := floodAgent(t, "limits:\n  rate: 10\n  burst: 20\n")
	start := time.Now()
	_, line := startFlood(t, dir, "jwt-small", sock, 200)
	elapsed := time.Since(start)
	var ok, exhausted int
	if _, err := fmt.Sscanf(line, "DONE %d %d", &ok, &exhausted); err != nil {
		t.Fatalf("flood answered %q", line)
	}
	t.Logf("flood: %d SVIDs, %d refused in %v", ok, exhausted, elapsed.Round(time.Millisecond))
	if limit := 20 + int(10*elapsed.Seconds()) + 5; ok > limit || exhausted == 0 {
		t.Errorf("uid %d got %d SVIDs and %d refusals in %v, want at most %d (burst 20 + 10/s)", nobody, ok, exhausted, elapsed, limit)
	}
	if v := scrape(t, admin, `nodeward_workload_api_limited_total{reason="rate"}`); int(v) != exhausted {
		t.Errorf("limited rate = %v, want %d", v, exhausted)
	}
	wellBehaved(t, sock)
}

// TestLowFDLimitIdleConnsDoNotStarve (issue 11 item 22): with a hard limit
// of 64 descriptors, idle connections of one uid cannot take them all: the
// agent fits max_conns to the limit, and a caller of another uid is served.
func TestLowFDLimitIdleConnsDoNotStarve(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the flooding caller as uid 65534")
	}
	dir := testutil.SocketDir(t)
	admin := freePort(t)
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", "admin_listen: "+admin+"\n"+testEntries(t))
	a := testutil.StartProcess(t, "/bin/sh", sock, "-c", "ulimit -n 64 && exec "+bin+" agent --config "+cfg)
	testutil.WaitServing(t, sock, 10*time.Second)
	if lim := procLimit(t, a.Cmd.Process.Pid); lim != "64" {
		t.Fatalf("agent's open files limit %s, want 64", lim)
	}
	_, line := startFlood(t, dir, "idle", sock, 60)
	t.Logf("flood: %s", line)
	if v := pollMetric(t, admin, `nodeward_workload_api_limited_total{reason="max_conns_per_uid"}`, 30*time.Second,
		func(v float64) bool { return v > 0 }); v == 0 {
		t.Errorf("no connection of the flooding uid refused")
	}
	wellBehaved(t, sock)
	if !strings.Contains(a.Log(), "file descriptor limit is too low") {
		t.Errorf("no warning that max_conns was lowered to fit the descriptor limit")
	}
}

// TestEMFILEKeepsServing (issue 11 item 22): when the agent runs out of
// descriptors (here: admin connections take them), Workload API accepts
// fail; they are counted and logged, and the agent serves again once
// descriptors are free.
func TestEMFILEKeepsServing(t *testing.T) {
	dir := testutil.SocketDir(t)
	admin := freePort(t)
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", "admin_listen: "+admin+"\n"+testEntries(t))
	a := testutil.StartProcess(t, "/bin/sh", sock, "-c", "ulimit -n 64 && exec "+bin+" agent --config "+cfg)
	testutil.WaitServing(t, sock, 10*time.Second)
	var hogs []net.Conn
	defer func() {
		for _, c := range hogs {
			_ = c.Close()
		}
	}()
	// Keep-alive admin connections (idle after one request, never timed
	// out) until the agent has no descriptor left.
	for len(hogs) < 200 && countFDs(t, a.Cmd.Process.Pid) < 64 {
		c, err := net.Dial("tcp", admin)
		if err != nil {
			t.Fatal(err)
		}
		hogs = append(hogs, c)
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		if _, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil {
			break // not accepted: out of descriptors
		}
		_ = c.SetDeadline(time.Time{})
	}
	t.Logf("%d admin connections; agent holds %d descriptors", len(hogs), countFDs(t, a.Cmd.Process.Pid))
	// A Workload API connection now waits in the backlog while accept
	// fails.
	wc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer wc.Close()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(a.Log(), "workload API accept failed") {
		if time.Now().After(deadline) {
			t.Fatalf("no accept failure logged with %d admin connections; agent has %d fds", len(hogs), countFDs(t, a.Cmd.Process.Pid))
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, c := range hogs {
		_ = c.Close()
	}
	hogs = nil
	// Once descriptors are free again, the agent serves.
	deadline = time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+sock))
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent did not serve again after EMFILE: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if v := scrape(t, admin, `nodeward_workload_api_accept_errors_total{kind="emfile"}`); v == 0 {
		t.Errorf("accept errors not counted")
	}
	if a.Cmd.ProcessState != nil {
		t.Fatal("agent exited")
	}
}

func procLimit(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	for ln := range strings.Lines(string(b)) {
		if strings.HasPrefix(ln, "Max open files") {
			return strings.Fields(ln)[3]
		}
	}
	return ""
}

func countFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
