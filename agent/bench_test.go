package agent

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// In-process benchmarks, for profiling the agent's request path
// (go test -bench InProcess -cpuprofile). The figures users see come from
// test/bench, which drives a separate agent process.
func BenchmarkInProcessFetchX509SVID(b *testing.B) {
	benchInProcess(b, func(ctx context.Context, c *workloadapi.Client) error {
		_, err := c.FetchX509SVID(ctx)
		return err
	})
}

func BenchmarkInProcessFetchJWTSVID(b *testing.B) {
	benchInProcess(b, func(ctx context.Context, c *workloadapi.Client) error {
		_, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "bench"})
		return err
	})
}

func benchInProcess(b *testing.B, call func(context.Context, *workloadapi.Client) error) {
	// The per-uid rate limit is off: the benchmark measures the request
	// path, not the limiter's back-pressure.
	cfg := testConfig(b, "limits:\n  rate: 0\nentries:\n"+selfEntry("bench", ""))
	r := startAgent(b, cfg)
	ctx := context.Background()
	c, err := workloadapi.New(ctx, workloadapi.WithAddr(r.addr))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.ReportAllocs()
	for b.Loop() {
		if err := call(ctx, c); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAttestPID is one caller's full attestation (unix + cgroup
// attestors, concurrently, warm caches), with p50/p99 over the iterations.
func BenchmarkAttestPID(b *testing.B) {
	_, attestors := BuiltIns(nil)
	pid := int32(os.Getpid())
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	for b.Loop() {
		t0 := time.Now()
		if _, err := AttestPID(ctx, attestors, pid, DefaultAttestTimeout); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
}

// BenchmarkTimeToRevoke measures from Reload without the caller's entry to
// the open go-spiffe stream's PermissionDenied.
func BenchmarkTimeToRevoke(b *testing.B) {
	cfg := testConfig(b, "entries:\n"+selfEntry("revoked", ""))
	r := startAgent(b, cfg)
	none := *cfg
	none.Entries = nil
	var total time.Duration
	for b.Loop() {
		if err := r.agent.Reload(cfg); err != nil {
			b.Fatal(err)
		}
		w := &watcher{updates: make(chan *workloadapi.X509Context, 16), errs: make(chan error, 16)}
		ctx, cancel := context.WithCancel(context.Background())
		c, err := workloadapi.New(ctx, workloadapi.WithAddr(r.addr))
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{})
		go func() { defer close(done); _ = c.WatchX509Context(ctx, w) }()
		<-w.updates
		start := time.Now()
		if err := r.agent.Reload(&none); err != nil {
			b.Fatal(err)
		}
		<-w.errs
		total += time.Since(start)
		cancel()
		<-done
		_ = c.Close()
	}
	b.ReportMetric(float64(total.Microseconds())/float64(b.N), "µs-to-revoke")
}
