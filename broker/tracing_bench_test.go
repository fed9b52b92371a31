package broker

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/nodeward/nodeward/internal/tracing"
)

// BenchmarkCachedTokenTracing measures the cached token path (API handler,
// peer check, cache hit, JSON answer; no socket) with tracing off (no
// OTEL_* variable: the default) and on (OTLP/HTTP to a local receiver
// that accepts and discards, batch processor as in production).
func BenchmarkCachedTokenTracing(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "off"
		if on {
			name = "on"
		}
		b.Run(name, func(b *testing.B) {
			for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER"} {
				b.Setenv(k, "")
			}
			if on {
				// A local OTLP/HTTP receiver that discards: only the
				// broker's side of exporting is measured.
				rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
					w.Header().Set("Content-Type", "application/x-protobuf")
				}))
				defer rcv.Close()
				b.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.URL)
				b.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
			}
			p, err := tracing.Setup(context.Background(), "bench")
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _ = p.Shutdown(context.Background()) }()
			clk := &fakeClock{now: time.Now()}
			cache, err := NewCache(&scriptedSource{clock: clk, life: time.Hour}, CacheConfig{Clock: time.Now, Tracer: p.Tracer("bench")})
			if err != nil {
				b.Fatal(err)
			}
			api := &API{
				tokens:   func(string) (Source, []string, bool) { return cache, []string{"read"}, true },
				identity: func(context.Context) (string, error) { return "spiffe://example.org/broker", nil },
				log:      slog.New(slog.DiscardHandler),
				tracer:   p.Tracer("bench"),
			}
			h := api.Handler()
			ctx := context.WithValue(context.Background(), callerKey{}, &caller{uid: uint32(getuid())})
			do := func() int {
				req := httptest.NewRequestWithContext(ctx, http.MethodGet, "http://broker/v1/token?upstream=corp&audience=api", nil)
				req.Header.Set(RequestHeader, "true")
				req.Header.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				return w.Code
			}
			if code := do(); code != http.StatusOK { // fills the cache
				b.Fatalf("status %d", code)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if code := do(); code != http.StatusOK {
					b.Fatalf("status %d", code)
				}
			}
			b.StopTimer()
			if on && p.Dropped() > 0 {
				b.ReportMetric(float64(p.Dropped())/float64(b.N), "dropped/op")
			}
		})
	}
}
