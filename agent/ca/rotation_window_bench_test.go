package ca

import (
	"context"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"
)

// benchMintAroundRotations mints b.N times while a goroutine rotates kind
// once every period (one rotation, then quiet: a real rotation, only far
// more often), and reports the mint latency p50/p99 of the mints that ran
// during a rotation (started between its start and 5 ms after its end)
// and of the others: the request-path cost of a rotation, by window.
func benchMintAroundRotations(b *testing.B, kind string, mint func(c *CA) error) {
	c, err := LoadOrCreate(Config{TrustDomain: td, Dir: dataDir(b), KeyTTL: 24 * time.Hour, JWTKeyTTL: 24 * time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	const period, tail = 200 * time.Millisecond, 5 * time.Millisecond
	type window struct{ from, to time.Time }
	var (
		mu      sync.Mutex
		windows []window
	)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			from := time.Now()
			if err := c.Rotate(kind); err != nil {
				b.Error(err)
				return
			}
			mu.Lock()
			windows = append(windows, window{from, time.Now().Add(tail)})
			mu.Unlock()
		}
	}()
	type sample struct {
		at  time.Time
		lat time.Duration
	}
	samples := make([]sample, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		t := time.Now()
		if err := mint(c); err != nil {
			b.Fatal(err)
		}
		samples = append(samples, sample{t, time.Since(t)})
	}
	b.StopTimer()
	cancel()
	<-done
	var during, outside []time.Duration
	for _, s := range samples {
		i := sort.Search(len(windows), func(i int) bool { return !windows[i].to.Before(s.at) })
		if i < len(windows) && !s.at.Before(windows[i].from) {
			during = append(during, s.lat)
		} else {
			outside = append(outside, s.lat)
		}
	}
	pct := func(l []time.Duration, p int) float64 {
		if len(l) == 0 {
			return 0
		}
		slices.Sort(l)
		return float64(l[len(l)*p/100].Microseconds())
	}
	b.ReportMetric(pct(outside, 50), "p50-outside-µs")
	b.ReportMetric(pct(during, 50), "p50-during-µs")
	b.ReportMetric(pct(outside, 99), "p99-outside-µs")
	b.ReportMetric(pct(during, 99), "p99-during-µs")
	b.ReportMetric(float64(len(during)), "mints-during")
	b.ReportMetric(float64(len(windows)), "rotations")
}

// BenchmarkMintLatencyAroundRotation compares the mints that overlapped a
// rotation with the rest of the same run (go test -run - -bench
// MintLatencyAroundRotation -benchtime 20000x ./agent/ca/).
func BenchmarkMintLatencyAroundRotation(b *testing.B) {
	b.Run("x509", func(b *testing.B) { benchMintAroundRotations(b, KindX509, mintX509) })
	b.Run("jwt", func(b *testing.B) { benchMintAroundRotations(b, KindJWT, mintJWT) })
}
