package broker

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestBreakerOpensOnRetryableOnlyAndRecovers(t *testing.T) {
	clk := &fakeClock{now: time.Now()}
	src := &scriptedSource{clock: clk, life: time.Hour}
	var mu sync.Mutex
	var transitions []string
	b := NewBreaker("corp", src, BreakerConfig{ConsecutiveFailures: 3, OpenTimeout: 50 * time.Millisecond,
		OnStateChange: func(_, from, to string) { mu.Lock(); transitions = append(transitions, from+">"+to); mu.Unlock() }}, nil)
	ctx := context.Background()
	// A 4xx is the caller's problem: it never opens the breaker.
	src.fail(&UpstreamError{Upstream: "corp", Status: 400, Code: "invalid_grant"})
	for range 10 {
		if _, err := b.Token(ctx, key); errors.Is(err, ErrUnavailable) {
			t.Fatal("4xx opened the breaker")
		}
	}
	// Retryable failures open it after 3 in a row.
	src.fail(&UpstreamError{Upstream: "corp", Status: 502, Retryable: true})
	for range 3 {
		_, _ = b.Token(ctx, key)
	}
	if b.State() != "open" {
		t.Fatalf("state %s after 3 retryable failures", b.State())
	}
	calls := src.calls.Load()
	_, err := b.Token(ctx, key)
	var un *UnavailableError
	if !errors.As(err, &un) || un.RetryAfter <= 0 || src.calls.Load() != calls {
		t.Fatalf("open breaker: %v (calls %d→%d); want UnavailableError at once", err, calls, src.calls.Load())
	}
	// After the open timeout one probe goes through; success closes it.
	src.fail(nil)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := b.Token(ctx, key); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("breaker never let a probe through")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if b.State() != "closed" {
		t.Fatalf("state %s after a successful probe", b.State())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(transitions) != 3 || transitions[0] != "closed>open" || transitions[1] != "open>half-open" || transitions[2] != "half-open>closed" {
		t.Fatalf("transitions %v", transitions)
	}
}

func TestBreakerHonoursRetryAfter(t *testing.T) {
	clk := &fakeClock{now: time.Now()}
	src := &scriptedSource{clock: clk, life: time.Hour}
	b := NewBreaker("corp", src, BreakerConfig{}, clk.Now)
	src.fail(&UpstreamError{Upstream: "corp", Status: 429, Retryable: true, RetryAfter: 30 * time.Second})
	_, _ = b.Token(context.Background(), key)
	src.fail(nil)
	calls := src.calls.Load()
	_, err := b.Token(context.Background(), key)
	var un *UnavailableError
	if !errors.As(err, &un) || un.RetryAfter != 30*time.Second || src.calls.Load() != calls {
		t.Fatalf("within Retry-After: %v", err)
	}
	clk.Add(31 * time.Second)
	if _, err := b.Token(context.Background(), key); err != nil {
		t.Fatalf("after Retry-After: %v", err)
	}
}
