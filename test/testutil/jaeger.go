package testutil

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// JaegerBinary returns the real Jaeger all-in-one binary pinned in
// tools/jaeger (v1.75.0), building it once into its versioned cache under
// a file lock (tools/jaeger/build.sh; `make jaeger` does the same). When
// it cannot be built the test is skipped locally and fails in CI.
func JaegerBinary(t testing.TB) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(file), "..", "..", "tools", "jaeger", "build.sh")
	out, err := exec.Command("sh", script).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		if os.Getenv("CI") != "" {
			t.Fatalf("build Jaeger: %v\n%s", err, stderr)
		}
		t.Skipf("cannot build Jaeger (tools/jaeger): %v\n%s", err, stderr)
	}
	return strings.TrimSpace(string(out))
}

// Jaeger is a real Jaeger (v2, OpenTelemetry-collector based) process with
// in-memory storage, OTLP receivers and the query HTTP API on free
// loopback ports.
type Jaeger struct {
	// OTLPGRPC and OTLPHTTP are the receivers' http://host:port endpoints
	// (values for OTEL_EXPORTER_OTLP_ENDPOINT).
	OTLPGRPC, OTLPHTTP string
	// QueryURL is the query API's base URL (GET /api/traces/{id}).
	QueryURL string
	Proc     *Agent
}

// StartJaeger runs Jaeger until the test ends and waits (with a deadline)
// until its query API answers.
func StartJaeger(t testing.TB) *Jaeger {
	t.Helper()
	bin := JaegerBinary(t)
	dir := t.TempDir()
	grpcPort, httpPort, queryPort, queryGRPC, health := FreePort(t), FreePort(t), FreePort(t), FreePort(t), FreePort(t)
	cfg := fmt.Sprintf(`service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    traces:
      level: none
    logs:
      level: info
extensions:
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:%s
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
  jaeger_query:
    storage:
      traces: memstore
    grpc:
      endpoint: 127.0.0.1:%s
    http:
      endpoint: 127.0.0.1:%s
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:%s
      http:
        endpoint: 127.0.0.1:%s
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
`, health, queryGRPC, queryPort, grpcPort, httpPort)
	path := filepath.Join(dir, "jaeger.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	// Jaeger's own tracing off: it would export to localhost:4317 and
	// hang its shutdown on that.
	p := startProcessEnv(t, bin, "", []string{"OTEL_SDK_DISABLED=true", "OTEL_TRACES_EXPORTER=none", "OTEL_EXPORTER_OTLP_TIMEOUT=200"}, "--config", path)
	// Runs before StartProcess's cleanup: Jaeger's query extension
	// retries exporting its own spans to localhost:4317 on shutdown, whatever
	// its environment says; a Jaeger that has not exited 5 s after SIGINT is
	// killed (its state is in memory, nothing to lose).
	t.Cleanup(func() {
		_ = p.Cmd.Process.Signal(os.Interrupt)
		deadline := time.Now().Add(5 * time.Second)
		for ProcessAlive(p.Cmd.Process.Pid) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		_ = p.Cmd.Process.Kill()
	})
	j := &Jaeger{OTLPGRPC: "http://127.0.0.1:" + grpcPort, OTLPHTTP: "http://127.0.0.1:" + httpPort,
		QueryURL: "http://127.0.0.1:" + queryPort, Proc: p}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(j.QueryURL + "/api/services")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("Jaeger query API not answering within 60s: %v\n%s", err, p.Log())
		}
		if p.Cmd.ProcessState != nil || !ProcessAlive(p.Cmd.Process.Pid) {
			t.Fatalf("Jaeger exited:\n%s", p.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return j
}

// JaegerSpan is a span as Jaeger's query API returns it.
type JaegerSpan struct {
	TraceID       string `json:"traceID"`
	SpanID        string `json:"spanID"`
	OperationName string `json:"operationName"`
	References    []struct {
		RefType string `json:"refType"`
		TraceID string `json:"traceID"`
		SpanID  string `json:"spanID"`
	} `json:"references"`
	Tags []struct {
		Key   string `json:"key"`
		Type  string `json:"type"`
		Value any    `json:"value"`
	} `json:"tags"`
	ProcessID string `json:"processID"`
}

// Tag returns the value of the span's tag key as a string ("" if absent).
func (s JaegerSpan) Tag(key string) string {
	for _, tg := range s.Tags {
		if tg.Key == key {
			return fmt.Sprint(tg.Value)
		}
	}
	return ""
}

// Parent returns the span id of the CHILD_OF reference ("" for a root).
func (s JaegerSpan) Parent() string {
	for _, r := range s.References {
		if r.RefType == "CHILD_OF" {
			return r.SpanID
		}
	}
	return ""
}

// JaegerTrace is one trace: its spans, processes (service names) and the
// raw JSON the query API answered.
type JaegerTrace struct {
	Spans     []JaegerSpan
	Processes map[string]struct {
		ServiceName string `json:"serviceName"`
	}
	Raw []byte
}

// Service returns the service name of span s.
func (tr *JaegerTrace) Service(s JaegerSpan) string { return tr.Processes[s.ProcessID].ServiceName }

// Find returns the spans named op.
func (tr *JaegerTrace) Find(op string) []JaegerSpan {
	var out []JaegerSpan
	for _, s := range tr.Spans {
		if s.OperationName == op {
			out = append(out, s)
		}
	}
	return out
}

// WaitTrace polls GET /api/traces/{traceID} until done(trace) holds or
// the deadline passes (spans arrive in batches, asynchronously).
func (j *Jaeger) WaitTrace(t testing.TB, traceID string, within time.Duration, done func(*JaegerTrace) bool) *JaegerTrace {
	t.Helper()
	deadline := time.Now().Add(within)
	var last *JaegerTrace
	for {
		if tr, err := j.getTrace(traceID); err == nil {
			last = tr
			if done(tr) {
				return tr
			}
		}
		if time.Now().After(deadline) {
			raw := "(none)"
			if last != nil {
				raw = string(last.Raw)
			}
			t.Fatalf("trace %s incomplete in Jaeger after %s; last answer: %s", traceID, within, raw)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// FindTraces returns the traces of service with spans named op (query API).
func (j *Jaeger) FindTraces(service, op string) ([]*JaegerTrace, error) {
	u := j.QueryURL + "/api/traces?limit=100&lookback=1h&service=" + service + "&operation=" + strings.ReplaceAll(op, " ", "%20")
	body, err := get(u)
	if err != nil {
		return nil, err
	}
	var r struct {
		Data []struct {
			Spans     []JaegerSpan `json:"spans"`
			Processes map[string]struct {
				ServiceName string `json:"serviceName"`
			} `json:"processes"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, err
	}
	var out []*JaegerTrace
	for _, d := range r.Data {
		out = append(out, &JaegerTrace{Spans: d.Spans, Processes: d.Processes, Raw: body})
	}
	return out, nil
}

func (j *Jaeger) getTrace(id string) (*JaegerTrace, error) {
	body, err := get(j.QueryURL + "/api/traces/" + id)
	if err != nil {
		return nil, err
	}
	var r struct {
		Data []struct {
			Spans     []JaegerSpan `json:"spans"`
			Processes map[string]struct {
				ServiceName string `json:"serviceName"`
			} `json:"processes"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, err
	}
	if len(r.Data) == 0 {
		return nil, fmt.Errorf("no trace %s yet", id)
	}
	return &JaegerTrace{Spans: r.Data[0].Spans, Processes: r.Data[0].Processes, Raw: body}, nil
}

func get(u string) ([]byte, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(u)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return body, nil
}
