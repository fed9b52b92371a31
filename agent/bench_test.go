package agent

import (
	"context"
	"testing"

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
	cfg := testConfig(b, "entries:\n"+selfEntry("bench", ""))
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
