package broker

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func attr(s sdktrace.ReadOnlySpan, k attribute.Key) string {
	for _, kv := range s.Attributes() {
		if kv.Key == k {
			return kv.Value.String()
		}
	}
	return ""
}

func ended(rec *tracetest.SpanRecorder, name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

// Cache spans with the real SDK (its span recorder): hit, miss and stale
// lookups; a background refresh is its own root span linked to the span
// that fetched the token, and carries the retry count and error status.
func TestCacheSpans(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	tr := tp.Tracer("test")
	c, src, clk := newTestCache(t, 100*time.Second, CacheConfig{SafetyMargin: 5 * time.Second, Tracer: tr})

	ctx, req := tr.Start(context.Background(), "request")
	if _, err := c.Token(ctx, key); err != nil {
		t.Fatal(err)
	}
	req.End()
	if _, err := c.Token(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	lookups := ended(rec, spanLookup)
	if len(lookups) != 2 || attr(lookups[0], attrCacheResult) != "miss" || attr(lookups[1], attrCacheResult) != "hit" {
		t.Fatalf("lookups: %d, results %q %q", len(lookups), attr(lookups[0], attrCacheResult), attr(lookups[len(lookups)-1], attrCacheResult))
	}
	if lookups[0].Parent().SpanID() != req.SpanContext().SpanID() {
		t.Error("lookup span not a child of the request span")
	}

	// Past the refresh moment, the IdP failing: a refresh span of its own.
	src.fail(&UpstreamError{Upstream: "corp", Status: 503, Retryable: true})
	clk.Add(90 * time.Second)
	c.RefreshDue()
	c.wait()
	refreshes := ended(rec, spanRefresh)
	if len(refreshes) != 1 {
		t.Fatalf("%d refresh spans, want 1", len(refreshes))
	}
	r := refreshes[0]
	if r.Parent().IsValid() {
		t.Error("refresh span has a parent: it must be its own root")
	}
	if len(r.Links()) != 1 || r.Links()[0].SpanContext.SpanID() != req.SpanContext().SpanID() {
		t.Errorf("refresh span links %v, want the request that fetched the token", r.Links())
	}
	if r.Status().Code != codes.Error || attr(r, attrReason) != "upstream_error" || attr(r, attrRetryCount) != "0" {
		t.Errorf("failed refresh: status %v, reason %q, retry_count %q", r.Status(), attr(r, attrReason), attr(r, attrRetryCount))
	}

	// Inside the safety margin the cached token is stale: a stale lookup.
	clk.Add(6 * time.Second)
	_, _ = c.Token(context.Background(), key)
	lookups = ended(rec, spanLookup)
	if got := attr(lookups[len(lookups)-1], attrCacheResult); got != "stale" {
		t.Errorf("lookup inside the margin: %q, want stale", got)
	}

	// Never a token in any attribute or event.
	for _, s := range rec.Ended() {
		for _, kv := range s.Attributes() {
			if strings.Contains(kv.Value.String(), "tok-") {
				t.Fatalf("span %s attribute %s holds a token", s.Name(), kv.Key)
			}
		}
		if len(s.Events()) != 0 {
			t.Errorf("span %s has events", s.Name())
		}
	}
}
