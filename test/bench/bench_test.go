// Package bench measures the agent the way users meet it: a real nodeward
// process, driven by the go-spiffe v2 client over its Unix socket, one new
// RPC per call. Besides ns/op it reports p50/p99 latency, calls/s, the
// agent's own CPU time per call (from /proc/PID/stat) and its RSS.
//
// Run: make bench, or go test -run '^$' -bench . ./test/bench
package bench

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/nodeward/nodeward/test/testutil"
)

var bin string

// TestMain builds the binary only when benchmarks run: `make test` runs this
// package without -bench, and the build would cost minutes for nothing.
func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.bench"); f == nil || f.Value.String() == "" {
		os.Exit(m.Run())
	}
	testutil.MainWithBinary(m, &bin)
}

// entries grants this benchmark binary (its uid and path) an identity.
func entries() string {
	exe, _ := os.Executable()
	return fmt.Sprintf("entries:\n  - spiffe_id: spiffe://example.org/bench\n    selectors: [unix:uid:%d, \"unix:path:%s\"]\n    x509_ttl: 1h\n    jwt_ttl: 10m\n", os.Geteuid(), exe)
}

// procStat returns the process's user+system CPU time and its RSS.
func procStat(b testing.TB, pid int) (cpu time.Duration, rssKiB int) {
	b.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the ")" of comm: state is field 3; utime 14, stime 15.
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const clkTck = 100 // USER_HZ on Linux
	cpu = time.Duration(ut+st) * time.Second / clkTck
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			rssKiB, _ = strconv.Atoi(strings.Fields(line)[1])
		}
	}
	return cpu, rssKiB
}

type rpc func(ctx context.Context, c *workloadapi.Client) error

func fetchX509(ctx context.Context, c *workloadapi.Client) error {
	_, err := c.FetchX509SVID(ctx)
	return err
}

func fetchJWT(ctx context.Context, c *workloadapi.Client) error {
	_, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "bench-audience"})
	return err
}

// runCalls makes b.N calls split over conc goroutines (one client each) and
// reports latency percentiles, throughput and the agent's CPU per call.
func runCalls(b *testing.B, a *testutil.Agent, conc int, call rpc) {
	runCallsAt(b, a.Socket, a.Cmd.Process.Pid, conc, call)
}

// runCallsAt is runCalls against any agent's socket (nodeward's or
// spire-agent's) and process.
func runCallsAt(b *testing.B, socket string, pid, conc int, call rpc) {
	ctx := context.Background()
	clients := make([]*workloadapi.Client, conc)
	for i := range clients {
		c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+socket))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		// Warm the connection and the agent's caches.
		for range 20 {
			if err := call(ctx, c); err != nil {
				b.Fatal(err)
			}
		}
		clients[i] = c
	}
	lat := make([][]time.Duration, conc)
	cpu0, _ := procStat(b, pid)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for g := range conc {
		n := b.N / conc
		if g < b.N%conc {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := make([]time.Duration, 0, n)
			for range n {
				t0 := time.Now()
				if err := call(ctx, clients[g]); err != nil {
					b.Error(err)
					return
				}
				l = append(l, time.Since(t0))
			}
			lat[g] = l
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	cpu1, rss := procStat(b, pid)
	all := reportLatencies(b, lat, elapsed, "calls/s")
	if len(all) == 0 {
		return
	}
	b.ReportMetric(float64((cpu1-cpu0).Microseconds())/float64(len(all)), "agent-cpu-µs/call")
	b.ReportMetric(float64(rss)/1024, "agent-rss-MiB")
}

// unthrottled lifts the per-uid rate limit (default 1,000 calls/s), which
// a load generator on one uid would otherwise hit.
const unthrottled = "limits:\n  rate: 0\n"

func startAgent(b *testing.B) *testutil.Agent {
	dir := testutil.SocketDir(b)
	cfg, sock := testutil.WriteConfig(b, dir, "example.org", unthrottled+entries())
	a := testutil.StartAgent(b, bin, cfg, sock)
	testutil.WaitServing(b, sock, 10*time.Second)
	return a
}

func BenchmarkWorkloadAPI(b *testing.B) {
	a := startAgent(b)
	for _, tc := range []struct {
		name string
		call rpc
	}{
		{"FetchX509SVID", fetchX509},
		{"FetchJWTSVID-cached", fetchJWT},
	} {
		for _, conc := range []int{1, 8} {
			b.Run(fmt.Sprintf("%s/conc=%d", tc.name, conc), func(b *testing.B) {
				runCalls(b, a, conc, tc.call)
			})
		}
	}
	// ValidateJWTSVID of a freshly fetched token.
	c, err := workloadapi.New(context.Background(), workloadapi.WithAddr("unix://"+a.Socket))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	tok, err := c.FetchJWTSVID(context.Background(), jwtsvid.Params{Audience: "bench-audience"})
	if err != nil {
		b.Fatal(err)
	}
	validate := func(ctx context.Context, c *workloadapi.Client) error {
		_, err := c.ValidateJWTSVID(ctx, tok.Marshal(), "bench-audience")
		return err
	}
	for _, conc := range []int{1, 8} {
		b.Run(fmt.Sprintf("ValidateJWTSVID/conc=%d", conc), func(b *testing.B) {
			runCalls(b, a, conc, validate)
		})
	}
}

// BenchmarkAgentRSS reports the agent's RSS when idle after start and after
// 10,000 FetchX509SVID + 10,000 FetchJWTSVID calls.
func BenchmarkAgentRSS(b *testing.B) {
	for range b.N {
		a := startAgent(b)
		_, idle := procStat(b, a.Cmd.Process.Pid)
		c, err := workloadapi.New(context.Background(), workloadapi.WithAddr("unix://"+a.Socket))
		if err != nil {
			b.Fatal(err)
		}
		for range 10000 {
			if err := fetchX509(context.Background(), c); err != nil {
				b.Fatal(err)
			}
			if err := fetchJWT(context.Background(), c); err != nil {
				b.Fatal(err)
			}
		}
		_ = c.Close()
		_, after := procStat(b, a.Cmd.Process.Pid)
		b.ReportMetric(float64(idle)/1024, "idle-rss-MiB")
		b.ReportMetric(float64(after)/1024, "rss-after-20k-calls-MiB")
	}
}

// BenchmarkStartToFirstSVID measures from exec of `nodeward agent` (with an
// existing CA in data_dir, as on every start but the first) to the first
// X.509-SVID received by a go-spiffe client.
func BenchmarkStartToFirstSVID(b *testing.B) {
	dir := testutil.SocketDir(b)
	cfg, sock := testutil.WriteConfig(b, dir, "example.org", unthrottled+entries())
	// First start creates the CA; later starts load it.
	warm := exec.Command(bin, "agent", "--config", cfg)
	if err := warm.Start(); err != nil {
		b.Fatal(err)
	}
	testutil.WaitServing(b, sock, 10*time.Second)
	_ = warm.Process.Signal(os.Interrupt)
	_ = warm.Wait()
	var total time.Duration
	b.ResetTimer()
	for range b.N {
		cmd := exec.Command(bin, "agent", "--config", cfg)
		t0 := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		addr := "unix://" + filepath.Clean(sock)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(addr))
			cancel()
			if err == nil {
				break
			}
			if time.Since(t0) > 10*time.Second {
				b.Fatalf("no SVID within 10s: %v", err)
			}
			time.Sleep(200 * time.Microsecond)
		}
		total += time.Since(t0)
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}
	b.ReportMetric(float64(total.Microseconds())/float64(b.N)/1e3, "ms-to-first-svid")
}

// reportLatencies merges per-goroutine latencies and reports p50, p99 and
// the rate (unit, e.g. "calls/s"); it returns the merged, sorted latencies.
func reportLatencies(b *testing.B, lat [][]time.Duration, elapsed time.Duration, unit string) []time.Duration {
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	if len(all) == 0 {
		return nil
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	pct := func(p float64) float64 { return float64(all[int(float64(len(all)-1)*p)].Nanoseconds()) / 1e3 }
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), unit)
	return all
}
