package bench

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/nodeward/nodeward/test/testutil"
)

// BenchmarkBrokerCachedToken measures GET /v1/token over the broker's Unix
// socket for a cached token, at concurrency 1 and 32, against a real broker
// process (with a real agent and IdP behind it).
func BenchmarkBrokerCachedToken(b *testing.B) {
	e := testutil.StartBrokerEnv(b, bin, 3600)
	if a := e.Token(b, "upstream=corp&audience=api"); a.Status != 200 {
		b.Fatalf("warm-up: %+v", a)
	}
	for _, conc := range []int{1, 32} {
		b.Run(fmt.Sprintf("conc=%d", conc), func(b *testing.B) {
			lat := make([][]time.Duration, conc)
			cpu0, _ := procStat(b, e.Broker.Cmd.Process.Pid)
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
						req, _ := http.NewRequest(http.MethodGet, "http://broker/v1/token?upstream=corp&audience=api", nil)
						req.Header.Set("Nodeward-Request", "true")
						resp, err := e.Client.Do(req)
						if err != nil {
							b.Error(err)
							return
						}
						_, _ = io.Copy(io.Discard, resp.Body)
						_ = resp.Body.Close()
						if resp.StatusCode != 200 {
							b.Errorf("status %d", resp.StatusCode)
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
			cpu1, rss := procStat(b, e.Broker.Cmd.Process.Pid)
			all := reportLatencies(b, lat, elapsed, "req/s")
			if len(all) == 0 {
				return
			}
			b.ReportMetric(float64((cpu1-cpu0).Microseconds())/float64(len(all)), "broker-cpu-µs/req")
			b.ReportMetric(float64(rss)/1024, "broker-rss-MiB")
		})
	}
}
