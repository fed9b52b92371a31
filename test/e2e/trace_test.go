package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/nodeward/nodeward/test/testutil"
)

// traceClient is the test's own traced client: a real OTel SDK exporting
// to the same Jaeger, so that the client span is the broker span's parent
// in the stored trace.
type traceClient struct {
	tp  *sdktrace.TracerProvider
	env *testutil.BrokerEnv
}

func newTraceClient(t *testing.T, j *testutil.Jaeger, env *testutil.BrokerEnv) *traceClient {
	t.Helper()
	exp, err := otlptracegrpc.New(context.Background(), otlptracegrpc.WithEndpointURL(j.OTLPGRPC), otlptracegrpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp),
		sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName("nodeward-e2e-client"))))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return &traceClient{tp: tp, env: env}
}

// token asks the broker for a token inside a client span whose
// traceparent the request carries; it returns the answer and the span.
func (c *traceClient) token(t *testing.T, query string) (testutil.TokenAnswer, trace.SpanContext) {
	t.Helper()
	ctx, span := c.tp.Tracer("e2e").Start(context.Background(), "client token request", trace.WithSpanKind(trace.SpanKindClient))
	defer span.End()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://broker/v1/token?"+query, nil)
	req.Header.Set("Nodeward-Request", "true")
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(req.Header))
	if !strings.HasPrefix(req.Header.Get("traceparent"), "00-"+span.SpanContext().TraceID().String()) {
		t.Fatalf("traceparent %q not sent", req.Header.Get("traceparent"))
	}
	resp, err := c.env.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var a testutil.TokenAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		t.Fatalf("answer %q: %v", body, err)
	}
	a.Status = resp.StatusCode
	return a, span.SpanContext()
}

func one(t *testing.T, tr *testutil.JaegerTrace, op string) testutil.JaegerSpan {
	t.Helper()
	s := tr.Find(op)
	if len(s) != 1 {
		t.Fatalf("%d spans %q in the trace, want 1; trace: %s", len(s), op, tr.Raw)
	}
	return s[0]
}

func wantTag(t *testing.T, s testutil.JaegerSpan, key, want string) {
	t.Helper()
	if got := s.Tag(key); got != want {
		t.Errorf("span %s: %s = %q, want %q", s.OperationName, key, got, want)
	}
}

// TestTracesInJaeger is issue 14's Traces bullet end to end: a real
// Jaeger, the real agent and broker binaries exporting to it over OTLP
// (standard OTEL_* variables only), a client sending its own traceparent.
func TestTracesInJaeger(t *testing.T) {
	j := testutil.StartJaeger(t)
	// Read by the agent and broker processes (StartProcess passes the
	// environment on); not parallel, so no other test sees them.
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", j.OTLPGRPC)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
	t.Setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=e2e")
	env := testutil.StartBrokerEnv(t, bin, 300, "audit_log: $DIR/broker-audit.log\n")
	c := newTraceClient(t, j, env)

	// 1: a miss, exchanged at upstream corp (token exchange).
	a1, sc1 := c.token(t, "upstream=corp&audience=api")
	if a1.Status != 200 || a1.AccessToken == "" {
		t.Fatalf("first request: %+v", a1)
	}
	// 2: the same key again, another client trace: a cache hit.
	a2, sc2 := c.token(t, "upstream=corp&audience=api")
	if a2.Status != 200 || a2.AccessToken != a1.AccessToken {
		t.Fatalf("second request: %+v", a2)
	}
	// 3: upstream direct (jwt-bearer).
	a3, sc3 := c.token(t, "upstream=direct&audience=api")
	if a3.Status != 200 || a3.AccessToken == "" {
		t.Fatalf("third request: %+v", a3)
	}

	const within = 60 * time.Second
	complete := func(n int) func(*testutil.JaegerTrace) bool {
		return func(tr *testutil.JaegerTrace) bool { return len(tr.Spans) >= n }
	}
	tr1 := j.WaitTrace(t, sc1.TraceID().String(), within, complete(4))
	client := one(t, tr1, "client token request")
	req := one(t, tr1, "GET /v1/token")
	lookup := one(t, tr1, "nodeward.broker.cache_lookup")
	exch := one(t, tr1, "nodeward.broker.upstream_exchange")
	if client.SpanID != sc1.SpanID().String() {
		t.Fatalf("client span id %s, want %s", client.SpanID, sc1.SpanID())
	}
	if req.Parent() != client.SpanID {
		t.Errorf("broker request span's parent %q, want the client span %s", req.Parent(), client.SpanID)
	}
	if lookup.Parent() != req.SpanID || exch.Parent() != req.SpanID {
		t.Errorf("cache span parent %q, exchange span parent %q, want the request span %s", lookup.Parent(), exch.Parent(), req.SpanID)
	}
	if got := tr1.Service(req); got != "nodeward-broker" {
		t.Errorf("request span service %q, want nodeward-broker", got)
	}
	wantTag(t, req, "http.request.method", "GET")
	wantTag(t, req, "url.path", "/v1/token")
	wantTag(t, req, "http.response.status_code", "200")
	wantTag(t, req, "nodeward.upstream", "corp")
	wantTag(t, req, "nodeward.reason", "upstream")
	wantTag(t, lookup, "nodeward.cache.result", "miss")
	wantTag(t, exch, "nodeward.upstream", "corp")
	wantTag(t, exch, "nodeward.grant_type", "token-exchange")
	wantTag(t, exch, "http.response.status_code", "200")
	wantTag(t, exch, "nodeward.breaker.state", "closed")
	wantTag(t, exch, "nodeward.retry_count", "0")

	tr2 := j.WaitTrace(t, sc2.TraceID().String(), within, complete(3))
	req2 := one(t, tr2, "GET /v1/token")
	wantTag(t, one(t, tr2, "nodeward.broker.cache_lookup"), "nodeward.cache.result", "hit")
	wantTag(t, req2, "nodeward.reason", "cache")
	if n := len(tr2.Find("nodeward.broker.upstream_exchange")); n != 0 {
		t.Errorf("a cache hit made %d upstream exchange spans", n)
	}

	tr3 := j.WaitTrace(t, sc3.TraceID().String(), within, complete(4))
	wantTag(t, one(t, tr3, "nodeward.broker.upstream_exchange"), "nodeward.grant_type", "jwt-bearer")
	wantTag(t, one(t, tr3, "nodeward.broker.upstream_exchange"), "nodeward.upstream", "direct")

	// The agent's issuance span: the broker's FetchJWTSVID for the IdP.
	var agentSpan testutil.JaegerSpan
	var agentTraces []*testutil.JaegerTrace
	deadline := time.Now().Add(within)
	for agentSpan.SpanID == "" {
		trs, err := j.FindTraces("nodeward-agent", "SpiffeWorkloadAPI/FetchJWTSVID")
		if err == nil {
			agentTraces = trs
			for _, tr := range trs {
				for _, s := range tr.Find("SpiffeWorkloadAPI/FetchJWTSVID") {
					if strings.Contains(s.Tag("nodeward.spiffe_ids"), "spiffe://example.org/broker") {
						agentSpan = s
					}
				}
			}
		}
		if agentSpan.SpanID == "" && time.Now().After(deadline) {
			t.Fatalf("no agent FetchJWTSVID span for the broker in Jaeger within %s (%v)", within, err)
		}
		if agentSpan.SpanID == "" {
			time.Sleep(100 * time.Millisecond)
		}
	}
	wantTag(t, agentSpan, "nodeward.kind", "jwt")
	wantTag(t, agentSpan, "rpc.grpc.status_code", "0")
	if agentSpan.Tag("nodeward.caller.uid") == "" || agentSpan.Tag("nodeward.entry_ids") == "" {
		t.Errorf("agent span without caller uid or entry ids: %+v", agentSpan.Tags)
	}

	// The broker's X.509 watch: a span per update sent on the stream.
	var x509Span testutil.JaegerSpan
	for x509Span.SpanID == "" {
		trs, err := j.FindTraces("nodeward-agent", "SpiffeWorkloadAPI/FetchX509SVID")
		if err == nil {
			for _, tr := range trs {
				for _, s := range tr.Find("SpiffeWorkloadAPI/FetchX509SVID") {
					if strings.Contains(s.Tag("nodeward.spiffe_ids"), "spiffe://example.org/broker") {
						x509Span = s
					}
				}
			}
		}
		if x509Span.SpanID == "" && time.Now().After(deadline) {
			t.Fatalf("no agent FetchX509SVID update span for the broker in Jaeger within %s (%v)", within, err)
		}
		if x509Span.SpanID == "" {
			time.Sleep(100 * time.Millisecond)
		}
	}
	wantTag(t, x509Span, "nodeward.kind", "x509")
	wantTag(t, x509Span, "nodeward.stream.update", "false")

	// The audit records carry the same trace ids.
	var found1, found2 bool
	for _, r := range readAudit(t, filepath.Join(env.Dir, "broker-audit.log")) {
		if r["event"] != "token" {
			continue
		}
		switch r["trace_id"] {
		case sc1.TraceID().String():
			found1 = r["span_id"] == req.SpanID && r["reason"] == "upstream"
		case sc2.TraceID().String():
			found2 = r["span_id"] == req2.SpanID && r["reason"] == "cache"
		}
	}
	if !found1 || !found2 {
		t.Errorf("broker audit records with the requests' trace and span ids: first %v, second %v", found1, found2)
	}
	var agentAudit bool
	for _, r := range readAudit(t, filepath.Join(env.Dir, "audit.log")) {
		if r["event"] == "issue" && r["kind"] == "jwt" && r["trace_id"] == agentSpan.TraceID && r["span_id"] == agentSpan.SpanID {
			agentAudit = true
		}
	}
	if !agentAudit {
		t.Errorf("no agent issue record with the span's trace_id %s", agentSpan.TraceID)
	}

	// The drop counter is exported (tracing on), at 0 with Jaeger up.
	resp, err := http.Get(env.MetricsURL)
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if !strings.Contains(string(metrics), "\nnodeward_broker_trace_spans_dropped_total 0\n") {
		t.Errorf("nodeward_broker_trace_spans_dropped_total 0 not in the broker's /metrics")
	}

	// Never a token or an assertion in anything exported: the access tokens
	// served, and nothing JWT-shaped (the JWT-SVIDs presented to the IdP
	// and issued by the agent all start eyJ).
	raws := [][]byte{tr1.Raw, tr2.Raw, tr3.Raw}
	for _, tr := range agentTraces {
		raws = append(raws, tr.Raw)
	}
	if all, err := j.FindTraces("nodeward-broker", "GET /v1/token"); err == nil {
		for _, tr := range all {
			raws = append(raws, tr.Raw)
		}
	}
	secrets := slices.Compact([]string{a1.AccessToken, a3.AccessToken, "eyJ"})
	for _, raw := range raws {
		for _, s := range secrets {
			if strings.Contains(string(raw), s) {
				t.Fatalf("exported trace JSON holds a token or assertion (%.12s…)", s)
			}
		}
	}
}
