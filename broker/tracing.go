package broker

import (
	"context"
	"errors"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/nodeward/nodeward/internal/tracing"
)

// Span and attribute names of the broker's traces (docs/operating.md,
// "Traces"). No attribute ever holds a token, assertion or secret: only
// names, states and result codes.
const (
	spanRequest  = "GET /v1/token"
	spanLookup   = "nodeward.broker.cache_lookup"
	spanExchange = "nodeward.broker.upstream_exchange"
	spanRefresh  = "nodeward.broker.refresh"

	attrUpstream     = attribute.Key("nodeward.upstream")
	attrGrant        = attribute.Key("nodeward.grant_type")
	attrCacheResult  = attribute.Key("nodeward.cache.result")
	attrBreakerState = attribute.Key("nodeward.breaker.state")
	attrRetryCount   = attribute.Key("nodeward.retry_count")
	attrReason       = attribute.Key("nodeward.reason")
	attrDecision     = attribute.Key("nodeward.decision")
	attrSPIFFEID     = attribute.Key("nodeward.spiffe_id")
)

// SetTracing makes the broker record spans with p's tracer (off, the
// default, when p is nil or not enabled) and count p's dropped spans in
// nodeward_broker_trace_spans_dropped_total. Call it once, before Serve.
func (b *Broker) SetTracing(p *tracing.Provider) {
	t := p.Tracer("github.com/nodeward/nodeward/broker")
	b.tracer = t
	b.api.tracer = t
	b.cache.cfg.Tracer = t
	if p.Enabled() {
		b.registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "nodeward_broker_trace_spans_dropped_total",
			Help: "Spans of this process dropped because the export queue was full or the collector refused them.",
		}, func() float64 { return float64(p.Dropped()) }))
	}
}

// startRequest starts the server span of one token request, a child of
// the caller's W3C traceparent when it sent one.
func (a *API) startRequest(r *http.Request) (*http.Request, trace.Span) {
	ctx := otel.GetTextMapPropagator().Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	ctx, span := a.tracer.Start(ctx, spanRequest, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(
			attribute.String("http.request.method", r.Method),
			attribute.String("url.path", r.URL.Path),
			attribute.String("http.route", "/v1/token"),
		))
	return r.WithContext(ctx), span
}

// endRequest records a request's outcome on its span.
func endRequest(span trace.Span, d *decision, upstreamLabel string) {
	span.SetAttributes(
		attribute.Int("http.response.status_code", d.status),
		attrUpstream.String(upstreamLabel),
		attrReason.String(d.reason),
	)
	if d.keyKnown {
		span.SetAttributes(attrSPIFFEID.String(d.key.SPIFFEID))
	}
	if d.status == http.StatusOK {
		span.SetAttributes(attrDecision.String("allow"))
	} else {
		span.SetAttributes(attrDecision.String("deny"))
	}
	if d.status >= 500 {
		span.SetStatus(codes.Error, d.reason)
	}
	span.End()
}

// retryCountKey carries a background refresh's failed attempts so far to
// the upstream exchange span.
type retryCountKey struct{}

func retryCount(ctx context.Context) int {
	n, _ := ctx.Value(retryCountKey{}).(int)
	return n
}

// exchangeStatus is the HTTP status the IdP answered (0: none reached).
func exchangeStatus(err error) int {
	if err == nil {
		return http.StatusOK
	}
	var ue *UpstreamError
	if errors.As(err, &ue) {
		return ue.Status
	}
	return 0
}
