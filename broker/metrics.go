package broker

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Metrics are the broker's Prometheus metrics (prefix nodeward_broker_).
// Labels are upstream names, HTTP statuses, error classes and results:
// never SPIFFE IDs, audiences or tokens.
type Metrics struct {
	Requests      *prometheus.CounterVec // upstream, status
	CacheHits     prometheus.Counter
	CacheMisses   prometheus.Counter
	Evictions     prometheus.Counter
	Refreshes     *prometheus.CounterVec   // result: ok, error
	UpstreamTime  *prometheus.HistogramVec // upstream
	UpstreamError *prometheus.CounterVec   // upstream, class: rejected, retryable, breaker_open
	BreakerState  *prometheus.GaugeVec     // upstream: 0 closed, 1 half-open, 2 open
	BreakerForced *prometheus.GaugeVec     // upstream: 1 while a game day forces it open
	RateLimited   *prometheus.CounterVec   // reason: upstream_calls, keys
	AuditLost     prometheus.Counter
	AuditDropped  prometheus.Counter
}

// NewMetrics registers the broker's metrics on r.
func NewMetrics(r prometheus.Registerer, cachedKeys func() float64) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nodeward_broker_requests_total",
			Help: "Token API requests, by upstream and HTTP status."}, []string{"upstream", "status"}),
		CacheHits: prometheus.NewCounter(prometheus.CounterOpts{Name: "nodeward_broker_cache_hits_total",
			Help: "Token requests served from the cache."}),
		CacheMisses: prometheus.NewCounter(prometheus.CounterOpts{Name: "nodeward_broker_cache_misses_total",
			Help: "Token requests that needed an upstream call (concurrent misses for a key share one)."}),
		Evictions: prometheus.NewCounter(prometheus.CounterOpts{Name: "nodeward_broker_cache_evictions_total",
			Help: "Cached tokens dropped: idle, LRU-evicted or of a revoked identity."}),
		Refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nodeward_broker_refreshes_total",
			Help: "Background token refreshes, by result."}, []string{"result"}),
		UpstreamTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "nodeward_broker_upstream_duration_seconds",
			Help: "Duration of token requests to upstream IdPs.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}, []string{"upstream"}),
		UpstreamError: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nodeward_broker_upstream_errors_total",
			Help: "Failed upstream token requests by class (rejected: a 4xx from the IdP; retryable: timeouts, resets, 5xx, 429, garbage; unavailable: breaker open or Retry-After; unusable: a token too short-lived or of a type not accepted)."}, []string{"upstream", "class"}),
		BreakerState: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "nodeward_broker_breaker_state",
			Help: "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open."}, []string{"upstream"}),
	}
	m.RateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nodeward_broker_rate_limited_total",
		Help: "Token requests refused with 429 by the per-caller limits, by reason (upstream_calls, keys)."}, []string{"reason"})
	for _, r := range []string{"upstream_calls", "keys"} {
		m.RateLimited.WithLabelValues(r) // exported at zero from the start
	}
	m.AuditLost = prometheus.NewCounter(prometheus.CounterOpts{Name: "nodeward_broker_audit_write_errors_total",
		Help: "Broker audit records that could not be written."})
	m.AuditDropped = prometheus.NewCounter(prometheus.CounterOpts{Name: "nodeward_broker_audit_dropped_total",
		Help: "Broker audit denial records dropped by the per-uid rate limit."})
	m.BreakerForced = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "nodeward_broker_breaker_forced",
		Help: "1 while an operator's game day forces the upstream's circuit breaker open (nodeward_broker_breaker_state then shows 2), else 0."}, []string{"upstream"})
	r.MustRegister(m.RateLimited, m.AuditLost, m.AuditDropped, m.BreakerForced)
	r.MustRegister(m.Requests, m.CacheHits, m.CacheMisses, m.Evictions, m.Refreshes, m.UpstreamTime, m.UpstreamError, m.BreakerState,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "nodeward_broker_cached_tokens", Help: "Tokens in the cache."}, cachedKeys))
	return m
}

func breakerValue(state string) float64 {
	switch state {
	case "half-open":
		return 1
	case "open":
		return 2
	}
	return 0
}

// instrumented measures the upstream calls of one upstream's breaker.
type instrumented struct {
	name string
	next Source
	m    *Metrics
	b    *Broker // its tracer, breakers and upstreams (spans)
}

func (s instrumented) Token(ctx context.Context, k Key) (*Token, error) {
	if s.b != nil && s.b.tracer != nil {
		return s.traced(ctx, k)
	}
	return s.token(ctx, k)
}

// traced is Token inside an upstream exchange span.
func (s instrumented) traced(ctx context.Context, k Key) (*Token, error) {
	attrs := []attribute.KeyValue{attrUpstream.String(s.name), attrRetryCount.Int(retryCount(ctx))}
	if u := s.b.upstreams[s.name]; u != nil {
		attrs = append(attrs, attrGrant.String(u.cfg.Grant))
	}
	if br := s.b.breakers[s.name]; br != nil {
		attrs = append(attrs, attrBreakerState.String(br.State()))
	}
	ctx, span := s.b.tracer.Start(ctx, spanExchange, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	defer span.End()
	tok, err := s.token(ctx, k)
	if st := exchangeStatus(err); st != 0 {
		span.SetAttributes(attribute.Int("http.response.status_code", st))
	}
	if err != nil {
		span.SetAttributes(attrReason.String(errorReason(err)))
		span.SetStatus(codes.Error, errorReason(err)) // a closed set: never the IdP's words
	}
	return tok, err
}

func (s instrumented) token(ctx context.Context, k Key) (*Token, error) {
	start := time.Now()
	tok, err := s.next.Token(ctx, k)
	var un *UnavailableError
	switch {
	case err == nil:
		s.m.UpstreamTime.WithLabelValues(s.name).Observe(time.Since(start).Seconds())
	case errors.As(err, &un):
		s.m.UpstreamError.WithLabelValues(s.name, "unavailable").Inc()
	case errors.Is(err, ErrUnusableToken):
		s.m.UpstreamTime.WithLabelValues(s.name).Observe(time.Since(start).Seconds())
		s.m.UpstreamError.WithLabelValues(s.name, "unusable").Inc()
	case retryable(err):
		s.m.UpstreamTime.WithLabelValues(s.name).Observe(time.Since(start).Seconds())
		s.m.UpstreamError.WithLabelValues(s.name, "retryable").Inc()
	default:
		s.m.UpstreamTime.WithLabelValues(s.name).Observe(time.Since(start).Seconds())
		s.m.UpstreamError.WithLabelValues(s.name, "rejected").Inc()
	}
	return tok, err
}
