package workloadapi

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/status"

	"github.com/nodeward/nodeward/internal/audit"
)

// Attribute names of the agent's spans (docs/operating.md, "Traces"):
// the RPC, the caller's uid, the SPIFFE IDs and entries issued, the kind
// and the gRPC result code; never an SVID, key or token.
const (
	attrCallerUID = attribute.Key("nodeward.caller.uid")
	attrKind      = attribute.Key("nodeward.kind")
	attrSPIFFEIDs = attribute.Key("nodeward.spiffe_ids")
	attrEntryIDs  = attribute.Key("nodeward.entry_ids")
	attrUpdate    = attribute.Key("nodeward.stream.update")
	attrDecision  = attribute.Key("nodeward.decision")
)

// rpcSpan is the span of one issuing or validating RPC (or of one update
// a stream sends). A nil *rpcSpan (tracing off) does nothing.
type rpcSpan struct {
	span    trace.Span
	traceID string
	spanID  string
	ids     []string
	entries []string
}

// startSpan starts the span of rpc (nil when tracing is off).
func (s *Server) startSpan(ctx context.Context, rpc, kind string) *rpcSpan {
	if s.tracer == nil {
		return nil
	}
	_, span := s.tracer.Start(ctx, "SpiffeWorkloadAPI/"+rpc, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(
			attribute.String("rpc.system", "grpc"),
			attribute.String("rpc.service", "SpiffeWorkloadAPI"),
			attribute.String("rpc.method", rpc),
			attrKind.String(kind),
		))
	sc := span.SpanContext()
	return &rpcSpan{span: span, traceID: sc.TraceID().String(), spanID: sc.SpanID().String()}
}

// caller records the attested caller's uid.
func (r *rpcSpan) caller(c *caller) {
	if r == nil || c == nil || c.audit == nil {
		return
	}
	r.span.SetAttributes(attrCallerUID.Int64(int64(c.audit.UID)))
}

// issued records one SPIFFE ID (and its entry) issued or validated.
func (r *rpcSpan) issued(id, entry string) {
	if r == nil {
		return
	}
	r.ids = append(r.ids, id)
	if entry != "" {
		r.entries = append(r.entries, entry)
	}
}

// stamp puts the span's ids on an audit record.
func (r *rpcSpan) stamp(rec audit.Record) audit.Record {
	if r != nil {
		rec.TraceID, rec.SpanID = r.traceID, r.spanID
	}
	return rec
}

// set adds attributes.
func (r *rpcSpan) set(kv ...attribute.KeyValue) {
	if r != nil {
		r.span.SetAttributes(kv...)
	}
}

// end records the result (err's gRPC code) and ends the span.
func (r *rpcSpan) end(err error) {
	if r == nil {
		return
	}
	code := status.Code(err)
	r.span.SetAttributes(attribute.Int("rpc.grpc.status_code", int(code)))
	if len(r.ids) > 0 {
		r.span.SetAttributes(attrSPIFFEIDs.StringSlice(r.ids))
	}
	if len(r.entries) > 0 {
		r.span.SetAttributes(attrEntryIDs.StringSlice(r.entries))
	}
	if err != nil {
		r.span.SetAttributes(attrDecision.String("deny"))
		r.span.SetStatus(otelcodes.Error, code.String()) // the code only: messages can quote caller text
	} else {
		r.span.SetAttributes(attrDecision.String("allow"))
	}
	r.span.End()
}
