package broker

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestBreakerForceOpenExpiresAndReverts(t *testing.T) {
	clk := &fakeClock{now: time.Now()}
	src := &scriptedSource{clock: clk, life: time.Hour}
	b := NewBreaker("corp", src, BreakerConfig{}, clk.Now)
	ctx := context.Background()
	for _, d := range []time.Duration{0, -time.Second, MaxForce + time.Second} {
		if _, err := b.ForceOpen(d); err == nil {
			t.Fatalf("ForceOpen(%v) accepted", d)
		}
	}
	until, err := b.ForceOpen(time.Minute)
	if err != nil || !until.Equal(clk.Now().Add(time.Minute)) {
		t.Fatalf("ForceOpen: %v %v", until, err)
	}
	if b.State() != "open" {
		t.Fatalf("forced breaker is %s", b.State())
	}
	_, err = b.Token(ctx, key)
	var un *UnavailableError
	if !errors.As(err, &un) || un.RetryAfter <= 0 || !strings.Contains(un.Reason, "is open") || src.calls.Load() != 0 {
		t.Fatalf("forced breaker answered %v after %d upstream calls; want the open breaker's answer and no call", err, src.calls.Load())
	}
	// Expiry: it reverts by itself at the deadline.
	clk.Add(time.Minute + time.Millisecond)
	if _, ok := b.Forced(); ok || b.State() != "closed" {
		t.Fatalf("after the deadline: forced %v state %s", ok, b.State())
	}
	if _, err := b.Token(ctx, key); err != nil || src.calls.Load() != 1 {
		t.Fatalf("after the deadline: %v (calls %d)", err, src.calls.Load())
	}
	// Explicit revert.
	if _, err := b.ForceOpen(MaxForce); err != nil {
		t.Fatal(err)
	}
	if !b.Unforce() || b.State() != "closed" {
		t.Fatalf("Unforce: state %s", b.State())
	}
	if b.Unforce() {
		t.Fatal("second Unforce reported a force in effect")
	}
}

func newForceBroker(t *testing.T, extra string) *Broker {
	t.Helper()
	dir := t.TempDir()
	yaml := "workload_socket: unix://" + dir + "/no-agent.sock\nlisten: " + dir + "/b.sock\naudit_log: off\n" + extra +
		"upstreams:\n  - name: corp\n    token_endpoint: http://127.0.0.1:1/token\n    grant: jwt-bearer\n"
	cfg, err := ParseConfig("broker.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestForceSwitchStateMetricAndTimer(t *testing.T) {
	b := newForceBroker(t, "")
	br := b.breakers["corp"]
	state := func() float64 { return testutil.ToFloat64(b.metrics.BreakerState.WithLabelValues("corp")) }
	forced := func() float64 { return testutil.ToFloat64(b.metrics.BreakerForced.WithLabelValues("corp")) }
	b.forceOpen("corp", br, 5*time.Minute)
	if state() != 2 || forced() != 1 || b.BreakerState()["corp"] != "open" {
		t.Fatalf("forced: state metric %v forced %v status %s", state(), forced(), b.BreakerState()["corp"])
	}
	if !b.unforce("corp", br) || state() != 0 || forced() != 0 {
		t.Fatalf("reverted: state metric %v forced %v", state(), forced())
	}
	// The broker's own timer reverts a force nobody reverts.
	b.forceOpen("corp", br, 50*time.Millisecond)
	deadline := time.Now().Add(10 * time.Second)
	for forced() != 0 || state() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("not reverted at the deadline: state %v forced %v", state(), forced())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if br.State() != "closed" {
		t.Fatalf("state %s after expiry", br.State())
	}
}

func forceReq(t *testing.T, b *Broker, c *caller, method, query string) (int, map[string]any) {
	t.Helper()
	r := httptest.NewRequest(method, "/v1/breaker/force?"+query, nil)
	r.Header.Set(RequestHeader, "true")
	if c != nil {
		r = r.WithContext(context.WithValue(r.Context(), callerKey{}, c))
	}
	w := httptest.NewRecorder()
	b.api.Handler().ServeHTTP(w, r)
	var body map[string]any
	_ = json.Unmarshal(w.Body.Bytes(), &body)
	return w.Code, body
}

func TestForceEndpointPrivilegeAndProduction(t *testing.T) {
	own := &caller{uid: uint32(getuid()), pid: 1}
	b := newForceBroker(t, "")
	for _, c := range []*caller{nil, {uid: uint32(getuid()) + 1}, {uid: uint32(getuid()), tcp: true}} {
		if code, body := forceReq(t, b, c, http.MethodPost, "upstream=corp"); code != http.StatusForbidden {
			t.Fatalf("caller %+v: %d %v; want 403", c, code, body)
		}
	}
	if b.BreakerState()["corp"] != "closed" {
		t.Fatal("a refused force opened the breaker")
	}
	if code, _ := forceReq(t, b, own, http.MethodPost, "upstream=corp&duration=11m"); code != http.StatusBadRequest {
		t.Fatalf("duration over the maximum: %d", code)
	}
	if code, _ := forceReq(t, b, own, http.MethodPost, "upstream=nope"); code != http.StatusBadRequest {
		t.Fatalf("unknown upstream: %d", code)
	}
	code, body := forceReq(t, b, own, http.MethodPost, "upstream=corp&duration=2m")
	if code != 200 || body["state"] != "open" || body["forced"] != true {
		t.Fatalf("force: %d %v", code, body)
	}
	code, body = forceReq(t, b, own, http.MethodDelete, "upstream=corp")
	if code != 200 || body["state"] != "closed" || body["was_forced"] != true {
		t.Fatalf("revert: %d %v", code, body)
	}

	p := newForceBroker(t, "environment: production\n")
	if code, body := forceReq(t, p, own, http.MethodPost, "upstream=corp"); code != http.StatusConflict || body["error"] != "production_node" {
		t.Fatalf("production without confirmation: %d %v", code, body)
	}
	if p.BreakerState()["corp"] != "closed" {
		t.Fatal("a refused production force opened the breaker")
	}
	if code, body := forceReq(t, p, own, http.MethodPost, "upstream=corp&confirm_production=true&duration=1m"); code != 200 || body["state"] != "open" {
		t.Fatalf("production with confirmation: %d %v", code, body)
	}
	p.unforce("corp", p.breakers["corp"])
}

func TestEnvironmentConfig(t *testing.T) {
	for _, bad := range []string{"Production", "prod env", strings.Repeat("a", 40)} {
		if _, err := ParseConfig("broker.yaml", []byte(goodConfig+"environment: "+bad+"\n")); err == nil || !strings.Contains(err.Error(), "broker.yaml:") {
			t.Fatalf("environment %q: %v", bad, err)
		}
	}
	cfg, err := ParseConfig("broker.yaml", []byte(goodConfig+"environment: production\n"))
	if err != nil || !cfg.Production() {
		t.Fatalf("%v %v", cfg, err)
	}
}
