package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/nodeward/nodeward/internal/tracing"
)

// startTracing sets up OpenTelemetry traces from the standard OTEL_*
// environment variables (off without an OTLP endpoint) and returns the
// provider and its bounded flush, to run when the process stops.
func startTracing(ctx context.Context, service string, log *slog.Logger) (*tracing.Provider, func(), error) {
	p, err := tracing.Setup(ctx, service)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errUsage, err)
	}
	if p.Enabled() {
		log.Info("exporting traces over OTLP", "service_default", service)
	}
	return p, func() {
		if err := p.Shutdown(context.WithoutCancel(ctx)); err != nil {
			log.Warn("flushing traces", "err", err)
		}
		if n := p.Dropped(); n > 0 {
			log.Warn("spans dropped (export queue full or collector unreachable)", "count", n)
		}
	}, nil
}
