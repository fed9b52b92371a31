package tracing

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace/noop"
)

// FakeCollector counts the OTLP/HTTP export requests it receives. A fake
// because these tests only ask whether anything is sent at all; the real
// collector (Jaeger) receives spans in test/e2e/trace_test.go.
type FakeCollector struct {
	srv  *httptest.Server
	hits atomic.Int64
}

func newFakeCollector(t *testing.T) *FakeCollector {
	c := &FakeCollector{}
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/v1/traces" {
			c.hits.Add(1)
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(c.srv.Close)
	return c
}

// clearOTEL unsets every OTEL_* variable for the test.
func clearOTEL(t *testing.T) {
	for _, kv := range os.Environ() {
		if len(kv) > 5 && kv[:5] == "OTEL_" {
			k := kv[:indexByte(kv, '=')]
			t.Setenv(k, "")
			_ = os.Unsetenv(k)
		}
	}
}

func indexByte(s string, b byte) int {
	for i := range len(s) {
		if s[i] == b {
			return i
		}
	}
	return len(s)
}

func spans(t *testing.T, n int) {
	tr := otel.Tracer("test")
	for range n {
		_, s := tr.Start(context.Background(), "op")
		s.End()
	}
}

func TestOffWithoutEnvIsNoop(t *testing.T) {
	clearOTEL(t)
	p, err := Setup(context.Background(), "nodeward-agent")
	if err != nil {
		t.Fatal(err)
	}
	if p.Enabled() {
		t.Fatal("tracing on without any OTEL_* variable")
	}
	if _, ok := p.TracerProvider().(noop.TracerProvider); !ok {
		t.Fatalf("provider %T, want the no-op one", p.TracerProvider())
	}
	if p.Tracer("x") != nil {
		t.Fatal("Tracer is not nil when off: the hot path would do span work")
	}
	ctx, s := otel.Tracer("test").Start(context.Background(), "op")
	if s.IsRecording() {
		t.Fatal("global tracer records spans when off")
	}
	s.End()
	if tid, sid := IDs(ctx); tid != "" || sid != "" {
		t.Fatalf("IDs = %q, %q when off; want empty (audit fields omitted)", tid, sid)
	}
	if err := p.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestDisabledByStandardVariables(t *testing.T) {
	for _, tc := range []struct{ k, v string }{{"OTEL_SDK_DISABLED", "true"}, {"OTEL_TRACES_EXPORTER", "none"}} {
		t.Run(tc.k, func(t *testing.T) {
			clearOTEL(t)
			c := newFakeCollector(t)
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", c.srv.URL)
			t.Setenv(tc.k, tc.v)
			p, err := Setup(context.Background(), "nodeward-broker")
			if err != nil {
				t.Fatal(err)
			}
			if p.Enabled() {
				t.Fatalf("%s=%s: tracing on", tc.k, tc.v)
			}
			spans(t, 10)
			if err := p.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			if n := c.hits.Load(); n != 0 {
				t.Fatalf("%d export requests while off", n)
			}
		})
	}
}

func TestOnExportsAndFlushesOnShutdown(t *testing.T) {
	clearOTEL(t)
	c := newFakeCollector(t)
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", c.srv.URL+"/v1/traces")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "600000") // only the shutdown flush sends
	p, err := Setup(context.Background(), "nodeward-broker")
	if err != nil {
		t.Fatal(err)
	}
	if !p.Enabled() || p.Tracer("x") == nil {
		t.Fatal("tracing off with an OTLP endpoint set")
	}
	ctx, s := p.Tracer("x").Start(context.Background(), "op")
	if tid, sid := IDs(ctx); len(tid) != 32 || len(sid) != 16 {
		t.Fatalf("IDs = %q, %q; want W3C hex ids", tid, sid)
	}
	s.End()
	if err := p.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c.hits.Load() == 0 {
		t.Fatal("nothing exported on shutdown")
	}
}

func TestBadProtocolRefused(t *testing.T) {
	clearOTEL(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
	if _, err := Setup(context.Background(), "x"); err == nil {
		t.Fatal("unknown protocol accepted")
	}
}

// An unreachable collector: spans beyond the bounded queue are dropped and
// counted, ending a span never waits, and shutdown gives up in bounded time.
func TestUnreachableCollectorDropsAndNeverBlocks(t *testing.T) {
	clearOTEL(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close() // nothing listens there now
	for _, proto := range []string{"grpc", "http/protobuf"} {
		t.Run(proto, func(t *testing.T) {
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+addr)
			t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", proto)
			t.Setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "500")
			t.Setenv("OTEL_BSP_MAX_QUEUE_SIZE", "16")
			t.Setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "16")
			p, err := Setup(context.Background(), "x")
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			go func() { spans(t, 5000); close(done) }()
			select {
			case <-done:
			case <-time.After(60 * time.Second):
				t.Fatal("ending spans blocked on an unreachable collector")
			}
			if p.Dropped() == 0 {
				t.Fatal("no span counted as dropped past a 16-span queue")
			}
			sd := make(chan struct{})
			go func() { _ = p.Shutdown(context.Background()); close(sd) }()
			select {
			case <-sd:
			case <-time.After(ShutdownTimeout + 30*time.Second):
				t.Fatal("shutdown not bounded")
			}
		})
	}
}
