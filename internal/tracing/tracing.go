// Package tracing sets up OpenTelemetry traces from the standard OTEL_*
// environment variables, and only from them.
//
// Tracing is off unless OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set; OTEL_SDK_DISABLED=true or
// OTEL_TRACES_EXPORTER=none keep it off. Off, the process uses a no-op
// tracer provider: a span costs an interface call returning a non-recording
// span, nothing is queued and nothing is exported. On, spans go through a
// batch span processor with a bounded queue (OTEL_BSP_MAX_QUEUE_SIZE,
// default 2048) to an OTLP exporter (OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL
// grpc or http/protobuf, default http/protobuf); a span that finds the
// queue full is dropped and counted (Dropped), never waited for, so an
// unreachable collector never blocks or slows a request. The W3C
// traceparent/tracestate propagator is installed globally.
//
// Security: spans carry names, ids and result codes, never a token,
// assertion, key or SVID; callers of this package must keep it so.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// ShutdownTimeout bounds the final flush of queued spans.
const ShutdownTimeout = 5 * time.Second

// Provider is the process's tracer provider and its shutdown.
type Provider struct {
	tp       trace.TracerProvider
	sdk      *sdktrace.TracerProvider // nil when off
	dropped  atomic.Uint64
	failed   atomic.Uint64
	pending  atomic.Int64
	maxQueue int64
}

// Enabled reports whether spans are recorded and exported.
func (p *Provider) Enabled() bool { return p != nil && p.sdk != nil }

// TracerProvider returns the provider (a no-op one when off).
func (p *Provider) TracerProvider() trace.TracerProvider {
	if p == nil {
		return noop.NewTracerProvider()
	}
	return p.tp
}

// Dropped returns the number of spans dropped because the export queue was
// full, plus those of batches the collector did not accept.
func (p *Provider) Dropped() uint64 {
	if p == nil {
		return 0
	}
	return p.dropped.Load() + p.failed.Load()
}

// Shutdown flushes queued spans (at most ShutdownTimeout, or ctx's
// deadline if earlier) and stops the exporter. A no-op when off.
func (p *Provider) Shutdown(ctx context.Context) error {
	if !p.Enabled() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, ShutdownTimeout)
	defer cancel()
	if err := p.sdk.Shutdown(ctx); err != nil {
		return fmt.Errorf("tracing shutdown: %w", err)
	}
	return nil
}

// Getenv reads the environment (os.Getenv; tests pass their own).
type Getenv func(string) string

// enabled decides from the standard variables whether to export.
func enabled(getenv Getenv) bool {
	if v, _ := strconv.ParseBool(strings.TrimSpace(getenv("OTEL_SDK_DISABLED"))); v {
		return false
	}
	switch strings.TrimSpace(strings.ToLower(getenv("OTEL_TRACES_EXPORTER"))) {
	case "", "otlp":
	default: // none, or an exporter this binary does not have
		return false
	}
	return getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// protocol returns the OTLP protocol the variables ask for.
func protocol(getenv Getenv) (string, error) {
	p := getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if p == "" {
		p = getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	switch p {
	case "", "http/protobuf":
		return "http/protobuf", nil
	case "grpc":
		return "grpc", nil
	}
	return "", fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL %q: want grpc or http/protobuf", p)
}

// Setup reads the process environment: see SetupEnv.
func Setup(ctx context.Context, defaultService string) (*Provider, error) {
	return SetupEnv(ctx, defaultService, os.Getenv)
}

// SetupEnv builds the Provider from the OTEL_* variables read through
// getenv and installs it and the W3C propagator as the global ones.
// defaultService is the service.name unless OTEL_SERVICE_NAME (or
// service.name in OTEL_RESOURCE_ATTRIBUTES) names one. The exporter reads
// its own variables (endpoint, headers, timeout, TLS) from the process
// environment, as the SDK documents; sampling follows OTEL_TRACES_SAMPLER.
func SetupEnv(ctx context.Context, defaultService string, getenv Getenv) (*Provider, error) {
	otel.SetTextMapPropagator(propagation.TraceContext{}) // W3C traceparent/tracestate; no baggage
	if !enabled(getenv) {
		p := &Provider{tp: noop.NewTracerProvider()}
		otel.SetTracerProvider(p.tp)
		return p, nil
	}
	proto, err := protocol(getenv)
	if err != nil {
		return nil, err
	}
	var exp sdktrace.SpanExporter
	if proto == "grpc" {
		exp, err = otlptracegrpc.New(ctx)
	} else {
		exp, err = otlptracehttp.New(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("OTLP trace exporter: %w", err)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(defaultService)),
		resource.WithFromEnv(), // OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME win
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithProcessPID(),
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	p := &Provider{maxQueue: int64(envInt(getenv, "OTEL_BSP_MAX_QUEUE_SIZE", 2048))}
	bsp := sdktrace.NewBatchSpanProcessor(&countingExporter{next: exp, p: p},
		sdktrace.WithMaxQueueSize(int(p.maxQueue)))
	p.sdk = sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		sdktrace.WithSpanProcessor(&boundedProcessor{next: bsp, p: p}),
	)
	p.tp = p.sdk
	otel.SetTracerProvider(p.tp)
	return p, nil
}

func envInt(getenv Getenv, key string, def int) int {
	if n, err := strconv.Atoi(getenv(key)); err == nil && n > 0 {
		return n
	}
	return def
}

// boundedProcessor admits a span to the batch processor only while fewer
// than maxQueue spans are queued or being exported, so that the batch
// processor never drops one uncounted and never blocks: a full queue
// drops the span here, at the cost of an atomic add.
type boundedProcessor struct {
	next sdktrace.SpanProcessor
	p    *Provider
}

func (b *boundedProcessor) OnStart(ctx context.Context, s sdktrace.ReadWriteSpan) {
	b.next.OnStart(ctx, s)
}

func (b *boundedProcessor) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() {
		return
	}
	if b.p.pending.Add(1) > b.p.maxQueue {
		b.p.pending.Add(-1)
		b.p.dropped.Add(1)
		return
	}
	b.next.OnEnd(s)
}

func (b *boundedProcessor) Shutdown(ctx context.Context) error   { return b.next.Shutdown(ctx) }
func (b *boundedProcessor) ForceFlush(ctx context.Context) error { return b.next.ForceFlush(ctx) }

// countingExporter releases exported spans from the bound and counts the
// spans of batches the collector did not take.
type countingExporter struct {
	next sdktrace.SpanExporter
	p    *Provider
}

func (c *countingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	defer c.p.pending.Add(-int64(len(spans)))
	err := c.next.ExportSpans(ctx, spans)
	if err != nil {
		c.p.failed.Add(uint64(len(spans)))
	}
	return err
}

func (c *countingExporter) Shutdown(ctx context.Context) error { return c.next.Shutdown(ctx) }

// IDs returns the hex trace and span ids of ctx's span, or "" when ctx has
// no recording span: the audit record's trace_id and span_id, omitted when
// tracing is off (or the span was not sampled).
func IDs(ctx context.Context) (traceID, spanID string) {
	s := trace.SpanFromContext(ctx)
	if !s.IsRecording() {
		return "", ""
	}
	sc := s.SpanContext()
	return sc.TraceID().String(), sc.SpanID().String()
}

// Tracer returns a named tracer of p, or nil when tracing is off: callers
// keep the nil and skip all span work on their hot path.
func (p *Provider) Tracer(name string) trace.Tracer {
	if !p.Enabled() {
		return nil
	}
	return p.sdk.Tracer(name)
}
