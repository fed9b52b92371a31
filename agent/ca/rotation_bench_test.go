package ca

import (
	"context"
	"slices"
	"testing"
	"time"
)

// benchMintLatency mints with mint b.N times and reports p50 and p99 per
// mint; with rotating set, a goroutine rotates both key kinds back to back
// the whole time (key generation, both-or-neither pair writes with fsync,
// journal write, snapshot swap), the worst case of a rotation.
func benchMintLatency(b *testing.B, rotating bool, mint func(c *CA) error) {
	c, err := LoadOrCreate(Config{TrustDomain: td, Dir: dataDir(b), KeyTTL: 24 * time.Hour, JWTKeyTTL: 24 * time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	go func() {
		n := 0
		for ctx.Err() == nil && rotating {
			for _, k := range []string{KindX509, KindJWT} {
				if err := c.Rotate(k); err != nil {
					b.Error(err)
				}
				n++
			}
		}
		done <- n
	}()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		t := time.Now()
		if err := mint(c); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t))
	}
	b.StopTimer()
	cancel()
	rotations := <-done
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(rotations), "rotations")
}

func mintX509(c *CA) error {
	_, err := c.MintX509SVID(webID, []string{"web.internal"}, time.Hour)
	return err
}

func mintJWT(c *CA) error {
	_, err := c.MintJWTSVID(webID, []string{"aud"}, time.Minute)
	return err
}

// BenchmarkMintLatency compares minting outside and during rotations
// (go test -run - -bench MintLatency -benchtime 5000x ./agent/ca/).
func BenchmarkMintLatency(b *testing.B) {
	b.Run("x509/steady", func(b *testing.B) { benchMintLatency(b, false, mintX509) })
	b.Run("x509/rotating", func(b *testing.B) { benchMintLatency(b, true, mintX509) })
	b.Run("jwt/steady", func(b *testing.B) { benchMintLatency(b, false, mintJWT) })
	b.Run("jwt/rotating", func(b *testing.B) { benchMintLatency(b, true, mintJWT) })
}
