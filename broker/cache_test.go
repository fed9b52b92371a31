package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// scriptedSource is a test double of the layer below the cache (the breaker
// and the IdP): it counts calls and answers with tokens of a fixed lifetime
// or with the error it is told to return.
type scriptedSource struct {
	clock *fakeClock
	life  time.Duration
	calls atomic.Int32
	mu    sync.Mutex
	err   error
	gate  chan struct{} // when set, calls wait for it
}

func (s *scriptedSource) Token(_ context.Context, k Key) (*Token, error) {
	n := s.calls.Add(1)
	if s.gate != nil {
		<-s.gate
	}
	s.mu.Lock()
	err := s.err
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	now := s.clock.Now()
	return &Token{AccessToken: fmt.Sprintf("tok-%s-%d", k.Audience, n), TokenType: "Bearer", IssuedAt: now, ExpiresAt: now.Add(s.life)}, nil
}

func (s *scriptedSource) fail(err error) { s.mu.Lock(); s.err = err; s.mu.Unlock() }

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newTestCache(t *testing.T, life time.Duration, cfg CacheConfig) (*Cache, *scriptedSource, *fakeClock) {
	t.Helper()
	clk := &fakeClock{now: time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)}
	src := &scriptedSource{clock: clk, life: life}
	cfg.Clock = clk.Now
	if cfg.Rand == nil {
		cfg.Rand = func() float64 { return 0.5 }
	}
	c, err := NewCache(src, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c, src, clk
}

var key = Key{Upstream: "corp", SPIFFEID: "spiffe://example.org/web", Audience: "api", Scopes: "read"}

func TestCacheHitAndSingleflight(t *testing.T) {
	c, src, _ := newTestCache(t, time.Hour, CacheConfig{})
	src.gate = make(chan struct{})
	var wg sync.WaitGroup
	toks := make([]*Token, 20)
	for i := range toks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := c.Token(context.Background(), key)
			if err != nil {
				t.Error(err)
			}
			toks[i] = tok
		}()
	}
	// Let the one upstream call finish once it started.
	for src.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	close(src.gate)
	wg.Wait()
	if n := src.calls.Load(); n != 1 {
		t.Fatalf("%d upstream calls for 20 concurrent misses, want 1", n)
	}
	for _, tok := range toks {
		if tok != toks[0] {
			t.Fatal("callers got different tokens")
		}
	}
	if _, err := c.Token(context.Background(), key); err != nil || src.calls.Load() != 1 {
		t.Fatalf("hit made an upstream call: %v %d", err, src.calls.Load())
	}
}

func TestCacheRefreshesInWindowAndKeepsTokenOnFailure(t *testing.T) {
	c, src, clk := newTestCache(t, 100*time.Second, CacheConfig{SafetyMargin: 5 * time.Second})
	first, err := c.Token(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	// Rand 0.5 in window [0.5, 0.8]: refresh at 65 s.
	if next := c.RefreshDue(); !next.Equal(first.IssuedAt.Add(65 * time.Second)) {
		t.Fatalf("refresh due at %v, want +65s", next.Sub(first.IssuedAt))
	}
	clk.Add(64 * time.Second)
	c.RefreshDue()
	c.wait()
	if src.calls.Load() != 1 {
		t.Fatal("refreshed before the window")
	}
	// The IdP is down at refresh time: the valid token keeps being served.
	src.fail(&UpstreamError{Upstream: "corp", Status: 503, Retryable: true, RetryAfter: 20 * time.Second})
	clk.Add(time.Second)
	c.RefreshDue()
	c.wait()
	tok, err := c.Token(context.Background(), key)
	if err != nil || tok != first {
		t.Fatalf("token during IdP outage: %v %v", tok, err)
	}
	// Retry-After (20 s) holds the next attempt back.
	if next := c.RefreshDue(); next.Sub(clk.Now()) != 20*time.Second {
		t.Fatalf("next retry in %v, want 20s (Retry-After)", next.Sub(clk.Now()))
	}
	// Never served within the safety margin of expiry.
	clk.Add(30 * time.Second) // t=96s, expiry 100s, margin 5s
	if _, err := c.Token(context.Background(), key); err == nil {
		t.Fatal("token served within the safety margin of its expiry")
	}
	// The IdP is back: the next refresh replaces the token.
	src.fail(nil)
	c.RefreshDue()
	c.wait()
	tok, err = c.Token(context.Background(), key)
	if err != nil || tok == first || !tok.ExpiresAt.After(first.ExpiresAt) {
		t.Fatalf("after recovery: %v %v", tok, err)
	}
}

func TestCacheBackoffGrowsWithFullJitter(t *testing.T) {
	c, src, clk := newTestCache(t, time.Hour, CacheConfig{BaseBackoff: time.Second, MaxBackoff: 8 * time.Second, IdleTimeout: 24 * time.Hour,
		Rand: func() float64 { return 0.999 }})
	if _, err := c.Token(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	src.fail(errors.New("connection refused"))
	clk.Add(50 * time.Minute)
	var waits []time.Duration
	for range 6 {
		c.RefreshDue()
		c.wait()
		next := c.RefreshDue()
		waits = append(waits, next.Sub(clk.Now()).Round(100*time.Millisecond))
		clk.Add(next.Sub(clk.Now()))
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second, 8 * time.Second}
	for i := range want {
		if waits[i] != want[i] {
			t.Fatalf("backoff %v, want %v", waits, want)
		}
	}
}

func TestCacheIdleKeysAgeOut(t *testing.T) {
	c, src, clk := newTestCache(t, time.Hour, CacheConfig{IdleTimeout: 10 * time.Minute})
	if _, err := c.Token(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	clk.Add(11 * time.Minute)
	c.RefreshDue()
	c.wait()
	if c.Len() != 0 || src.calls.Load() != 1 {
		t.Fatalf("idle key: len %d, calls %d; want aged out without a refresh", c.Len(), src.calls.Load())
	}
}

func TestCacheErrorsAreNotCached(t *testing.T) {
	c, src, _ := newTestCache(t, time.Hour, CacheConfig{})
	src.fail(&UpstreamError{Upstream: "corp", Status: 400, Code: "invalid_grant"})
	if _, err := c.Token(context.Background(), key); err == nil {
		t.Fatal("want error")
	}
	src.fail(nil)
	if _, err := c.Token(context.Background(), key); err != nil || src.calls.Load() != 2 {
		t.Fatalf("after an error: %v, calls %d", err, src.calls.Load())
	}
}

// TestRefreshSpread creates 1,000 keys in the same second and checks that
// their refresh moments spread over the window: no second holds more than
// 2% of them (a uniform spread over 24 s puts ~4% in each second; the window
// here is 30%-of-100s wide, so ~3.3%).
func TestRefreshSpread(t *testing.T) {
	c, _, _ := newTestCache(t, 100*time.Second, CacheConfig{Rand: nil, SafetyMargin: time.Second})
	c.cfg.Rand = newSeededRand(1)
	hist := map[int64]int{}
	for i := range 1000 {
		k := key
		k.Audience = fmt.Sprint(i)
		tok, err := c.Token(context.Background(), k)
		if err != nil {
			t.Fatal(err)
		}
		e, _ := c.lru.Peek(k)
		hist[int64(e.refreshAt.Sub(tok.IssuedAt)/time.Second)]++
	}
	maxShare := 0
	for s, n := range hist {
		if s < 50 || s >= 80 {
			t.Fatalf("refresh at %ds, outside the 50–80%% window", s)
		}
		maxShare = max(maxShare, n)
	}
	if maxShare > 60 {
		t.Fatalf("one second holds %d of 1000 refreshes: %v", maxShare, hist)
	}
	t.Logf("refresh histogram (second of lifetime: keys): %v", hist)
}

func TestCacheOnStoreAndPinned(t *testing.T) {
	var stored []string
	c, _, clk := newTestCache(t, 100*time.Second, CacheConfig{IdleTimeout: time.Minute,
		OnStore: func(_ Key, tok *Token) { stored = append(stored, tok.AccessToken) },
		Pinned:  func(k Key) bool { return k == key }})
	if _, err := c.Token(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	// Nobody asks for 70 s (past the idle timeout): a pinned key is still refreshed.
	clk.Add(70 * time.Second)
	c.RefreshDue()
	c.wait()
	if len(stored) != 2 || stored[0] == stored[1] || c.Len() != 1 {
		t.Fatalf("stored %v, len %d: want the first token and its refresh, key kept", stored, c.Len())
	}
}
