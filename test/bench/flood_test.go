package bench

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/nodeward/nodeward/test/testutil"
)

func init() { testutil.FloodChild() }

// Flooding uids: one with an identity (JWT and stream floods), one without
// (idle connections).
const (
	floodUID      = 65534
	noIdentityUID = 65533
)

// wellBehavedRate paces the well-behaved caller: a service fetching its
// SVID now and then, not a load generator.
const wellBehavedRate = 200 // calls/s

// BenchmarkFlood measures, under each flood of issue 11 item 3, the
// agent's peak RSS and the latency of a well-behaved caller (FetchX509SVID
// at 200 calls/s from another uid), with the default limits:
//
//	unloaded            no flood (the baseline)
//	jwt-32x1KiB-aud     uid 65534 (entitled) calls FetchJWTSVID with 32
//	                    distinct 1 KiB audiences from 4 goroutines, nonstop
//	streams-20k-1conn   uid 65534 opens 20,000 FetchX509SVID streams on one
//	                    connection
//	idle-4k-conns       uid 65533 (no identity) opens 4,000 connections
//	                    that never call
//
// Run as root: go test -run '^$' -bench Flood -benchtime 2000x ./test/bench/
func BenchmarkFlood(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root to run the flooding callers under other uids")
	}
	for _, tc := range []struct {
		name, mode string
		n          int
		uid        uint32
	}{
		{"unloaded", "", 0, 0},
		{"jwt-32x1KiB-aud", "jwt", 0, floodUID},
		{"streams-20k-1conn", "streams", 20000, floodUID},
		{"idle-4k-conns", "idle", 4000, noIdentityUID},
	} {
		b.Run(tc.name, func(b *testing.B) {
			dir := testutil.SocketDir(b)
			extra := fmt.Sprintf("  - spiffe_id: spiffe://example.org/flood\n    selectors: [unix:uid:%d]\n", floodUID)
			cfg, sock := testutil.WriteConfig(b, dir, "example.org", entries()+extra)
			a := testutil.StartAgent(b, bin, cfg, sock)
			testutil.WaitServing(b, sock, 10*time.Second)
			floodPID := 0
			if tc.mode != "" {
				f, line := testutil.StartFlood(b, dir, tc.mode, sock, tc.n, tc.uid)
				b.Logf("flood %s: %s", tc.mode, line)
				floodPID = f.PID()
			}
			agent0, _ := procStat(b, a.Cmd.Process.Pid)
			var flood0 time.Duration
			if floodPID != 0 {
				flood0, _ = procStat(b, floodPID)
			}
			t0 := time.Now()
			paced(b, a)
			wall := time.Since(t0)
			agent1, _ := procStat(b, a.Cmd.Process.Pid)
			b.ReportMetric(100*(agent1-agent0).Seconds()/wall.Seconds(), "agent-cpu-%")
			if floodPID != 0 {
				flood1, _ := procStat(b, floodPID)
				b.ReportMetric(100*(flood1-flood0).Seconds()/wall.Seconds(), "flooder-cpu-%")
			}
			b.ReportMetric(float64(vmKiB(b, a.Cmd.Process.Pid, "VmHWM"))/1024, "agent-peak-rss-MiB")
		})
	}
}

// paced makes b.N FetchX509SVID calls at wellBehavedRate on one client and
// reports p50/p99.
func paced(b *testing.B, a *testutil.Agent) {
	ctx := context.Background()
	c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+a.Socket))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	for range 20 {
		if err := fetchX509(ctx, c); err != nil {
			b.Fatal(err)
		}
	}
	lat := make([]time.Duration, 0, b.N)
	tick := time.NewTicker(time.Second / wellBehavedRate)
	defer tick.Stop()
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		<-tick.C
		t0 := time.Now()
		if err := fetchX509(ctx, c); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	elapsed := time.Since(start)
	b.StopTimer()
	reportLatencies(b, [][]time.Duration{lat}, elapsed, "calls/s")
}

// vmKiB returns a field of /proc/PID/status in KiB (VmHWM: peak RSS).
func vmKiB(b testing.TB, pid int, field string) int {
	b.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	return 0
}
