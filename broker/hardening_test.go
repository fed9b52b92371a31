package broker

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Issue 11 item 18: expiry decisions follow the wall clock. The default
// clocks carry no monotonic reading (which stops during a suspend), and a
// wall clock driven past a token's expiry stops it being served at once,
// by the cache and by the API that re-checks it when serving.
func TestExpiryFollowsWallClock(t *testing.T) {
	for name, now := range map[string]func() time.Time{"wallClock": wallClock} {
		if s := now().String(); strings.Contains(s, "m=") {
			t.Errorf("%s has a monotonic reading: %s", name, s)
		}
	}
	c, err := NewCache(sourceFunc(func(context.Context, Key) (*Token, error) { return nil, errors.New("unused") }), CacheConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if s := c.cfg.Clock().String(); strings.Contains(s, "m=") {
		t.Errorf("the cache's default clock has a monotonic reading: %s", s)
	}
	if s := NewBreaker("x", nil, BreakerConfig{}, nil).clock().String(); strings.Contains(s, "m=") {
		t.Errorf("the breaker's default clock has a monotonic reading: %s", s)
	}

	// A suspend-like step: the wall clock jumps past the expiry. A token
	// minted with a monotonic reading still counts as expired.
	cache, src, clk := newTestCache(t, time.Minute, CacheConfig{SafetyMargin: time.Second})
	api := &API{
		tokens:   func(string) (Source, []string, bool) { return cache, nil, true },
		identity: func(context.Context) (string, error) { return key.SPIFFEID, nil },
		log:      slog.New(slog.DiscardHandler),
		clock:    clk.Now,
	}
	client := serveAPI(t, api)
	if code, _, body := get(t, client, "upstream=corp&audience=api", true); code != 200 || body["expires_in"].(float64) != 60 {
		t.Fatalf("first token: %d %v", code, body)
	}
	src.mu.Lock()
	src.err = &UpstreamError{Upstream: "corp", Retryable: true, Err: errors.New("IdP down")}
	src.mu.Unlock()
	clk.Add(2 * time.Minute) // suspended past the expiry
	if code, _, body := get(t, client, "upstream=corp&audience=api", true); code == 200 {
		t.Fatalf("token served after its wall-clock expiry: %v", body)
	}
	// The API's own re-check: a source that hands out an expired token.
	expired := &Token{AccessToken: "old", TokenType: "Bearer", IssuedAt: clk.Now().Add(-time.Hour), ExpiresAt: clk.Now().Add(-time.Second)}
	api.tokens = func(string) (Source, []string, bool) {
		return sourceFunc(func(context.Context, Key) (*Token, error) { return expired, nil }), nil, true
	}
	if code, _, body := get(t, client, "upstream=corp&audience=api", true); code != 503 {
		t.Fatalf("API served a token past its expiry: %d %v", code, body)
	}
}

// Issue 11 item 23: background refreshes run on the cache's Run context:
// cancelling it ends an upstream call in flight and every goroutine.
func TestRefreshEndsWithRunContext(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	started := make(chan struct{}, 1)
	calls := 0
	src := sourceFunc(func(ctx context.Context, k Key) (*Token, error) {
		calls++
		if calls == 1 {
			now := time.Now()
			return &Token{AccessToken: "a", TokenType: "Bearer", IssuedAt: now, ExpiresAt: now.Add(2 * time.Second)}, nil
		}
		started <- struct{}{}
		<-ctx.Done() // an IdP that never answers
		return nil, ctx.Err()
	})
	c, err := NewCache(src, CacheConfig{SafetyMargin: time.Second, RefreshWindow: [2]float64{0.01, 0.02}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Token(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("no refresh started")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel: the refresh ignores the run context")
	}
}

// Issue 11 item 3: a caller uid may create at most keys_per_caller keys;
// keys of other uids, refreshes (no caller) and keys that left the cache
// do not count.
func TestLimiterKeysPerCaller(t *testing.T) {
	ok := sourceFunc(func(context.Context, Key) (*Token, error) { return &Token{}, nil })
	var limited []string
	l := newLimiter(ok, LimitsConfig{UpstreamCallsPerSecond: 1000, Burst: 1000, KeysPerCaller: 2}, func(kind string) { limited = append(limited, kind) })
	as := func(uid uint32) context.Context {
		return context.WithValue(context.Background(), callerKey{}, &caller{uid: uid})
	}
	k := func(aud string) Key { return Key{Upstream: "corp", Audience: aud} }
	for _, aud := range []string{"a", "b", "a"} {
		if _, err := l.Token(as(1000), k(aud)); err != nil {
			t.Fatalf("key %s: %v", aud, err)
		}
	}
	var rl *RateLimitedError
	if _, err := l.Token(as(1000), k("c")); !errors.As(err, &rl) || rl.RetryAfter <= 0 {
		t.Fatalf("third key: %v, want RateLimitedError", err)
	}
	if _, err := l.Token(as(1001), k("c")); err != nil {
		t.Fatalf("another uid: %v", err)
	}
	if _, err := l.Token(context.Background(), k("d")); err != nil {
		t.Fatalf("a refresh: %v", err)
	}
	l.forget(k("a"))
	if _, err := l.Token(as(1000), k("c")); err != nil {
		t.Fatalf("after a key left the cache: %v", err)
	}
	if len(limited) != 1 || limited[0] != "keys" {
		t.Errorf("limit metric reasons %v", limited)
	}
	// The upstream-call budget: a burst of 2, then 429.
	l = newLimiter(ok, LimitsConfig{UpstreamCallsPerSecond: 0.001, Burst: 2, KeysPerCaller: 100}, nil)
	for i, aud := range []string{"a", "b", "c"} {
		_, err := l.Token(as(7), k(aud))
		if (i < 2) != (err == nil) {
			t.Errorf("call %d: %v", i, err)
		}
	}
}

// Issue 11 item 13: an IdP's error_description never reaches a caller, and
// the assertion (or anything JWT-shaped) is cut out of it before a log.
func TestIdPErrorsSanitized(t *testing.T) {
	svid := "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzcGlmZmU6Ly9leGFtcGxlLm9yZy9icm9rZXIifQ.c2ln"
	u := testUpstream(t)
	r, b := resp(400, "application/json", `{"error":"invalid_grant","error_description":"assertion `+svid+` rejected"}`, nil)
	err := u.errorResponse(r, b, svid)
	if strings.Contains(err.Error(), "eyJ") || strings.Contains(err.Error(), "c2ln") {
		t.Fatalf("error carries the assertion: %v", err)
	}
	api := &API{
		tokens: func(string) (Source, []string, bool) {
			return sourceFunc(func(context.Context, Key) (*Token, error) { return nil, err }), nil, true
		},
		identity: func(context.Context) (string, error) { return key.SPIFFEID, nil },
		log:      slog.New(slog.DiscardHandler),
	}
	code, _, body := get(t, serveAPI(t, api), "upstream=corp", true)
	if code != 502 || body["error_description"] != rejectedMessages["invalid_grant"] {
		t.Fatalf("caller saw %d %v", code, body)
	}
}

// Issue 11 item 23: cancelling Serve's context ends every goroutine the
// broker started (listeners, refreshes, token file loops, the identity
// watch), even while the agent cannot be reached.
func TestServeEndsItsGoroutinesOnCancel(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	dir := t.TempDir()
	yaml := "workload_socket: unix://" + dir + "/no-agent.sock\nlisten: " + dir + "/b.sock\nlisten_tcp: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\naudit_log: off\n" +
		"upstreams:\n  - name: corp\n    token_endpoint: http://127.0.0.1:1/token\n    grant: jwt-bearer\n" +
		"sinks:\n  - upstream: corp\n    path: " + dir + "/token\n    on_rotate:\n      command: [/bin/true]\n"
	cfg, err := ParseConfig("broker.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Serve(ctx, nil) }()
	select {
	case <-b.Serving():
	case err := <-done:
		t.Fatalf("Serve: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("not serving")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}
