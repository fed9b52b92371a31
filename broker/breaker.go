package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"
)

// BreakerConfig configures the circuit breaker in front of one upstream.
type BreakerConfig struct {
	ConsecutiveFailures uint32        // retryable failures in a row that open it (default 5)
	OpenTimeout         time.Duration // how long it stays open before a probe (default 30s)
	MaxRetryAfter       time.Duration // cap of an IdP's Retry-After (default 60s)
	// OnStateChange hears transitions ("closed", "open", "half-open").
	OnStateChange func(upstream, from, to string)
}

// Breaker guards an upstream Source: it opens after consecutive retryable
// failures (timeouts, connection errors, 5xx, 429, garbage), lets one probe
// through when half-open, and fails fast with UnavailableError while open or
// while the IdP's Retry-After holds. A 4xx such as invalid_grant passes
// through without counting as a failure.
type Breaker struct {
	name    string
	next    Source
	cb      *gobreaker.CircuitBreaker[*Token]
	timeout time.Duration
	maxWait time.Duration
	clock   func() time.Time

	mu       sync.Mutex
	openedAt time.Time
	notUntil time.Time // Retry-After from the IdP
	// forcedUntil is the end of a forced outage (game day): until then
	// the breaker answers as if open, whatever the IdP does.
	forcedUntil time.Time
}

// NewBreaker wraps next.
func NewBreaker(name string, next Source, cfg BreakerConfig, clock func() time.Time) *Breaker {
	if cfg.ConsecutiveFailures == 0 {
		cfg.ConsecutiveFailures = 5
	}
	if cfg.OpenTimeout <= 0 {
		cfg.OpenTimeout = 30 * time.Second
	}
	if cfg.MaxRetryAfter <= 0 {
		cfg.MaxRetryAfter = DefaultMaxRetryAfter
	}
	if clock == nil {
		clock = wallClock
	}
	b := &Breaker{name: name, next: next, timeout: cfg.OpenTimeout, maxWait: cfg.MaxRetryAfter, clock: clock}
	b.cb = gobreaker.NewCircuitBreaker[*Token](gobreaker.Settings{
		Name:        name,
		MaxRequests: 1,
		Timeout:     cfg.OpenTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= cfg.ConsecutiveFailures },
		// Only retryable errors are the IdP's fault.
		IsSuccessful: func(err error) bool { return err == nil || !retryable(err) },
		OnStateChange: func(_ string, from, to gobreaker.State) {
			if to == gobreaker.StateOpen {
				b.mu.Lock()
				b.openedAt = b.clock()
				b.mu.Unlock()
			}
			if cfg.OnStateChange != nil {
				cfg.OnStateChange(name, from.String(), to.String())
			}
		},
	})
	return b
}

// State returns "closed", "half-open" or "open" (a forced-open breaker
// is "open").
func (b *Breaker) State() string {
	if _, ok := b.Forced(); ok {
		return "open"
	}
	return b.cb.State().String()
}

// MaxForce bounds a forced outage: every force ends by itself.
const MaxForce = 10 * time.Minute

// ForceOpen makes the breaker answer as if open until now+d (d in
// (0, MaxForce]): a rehearsed IdP outage. The cache in front keeps
// serving the tokens it holds; misses and refreshes fail fast. A later
// force replaces the deadline.
func (b *Breaker) ForceOpen(d time.Duration) (time.Time, error) {
	if d <= 0 || d > MaxForce {
		return time.Time{}, fmt.Errorf("force duration %v out of range (0, %v]", d, MaxForce)
	}
	until := b.clock().Add(d)
	b.mu.Lock()
	b.forcedUntil = until
	b.mu.Unlock()
	return until, nil
}

// Unforce ends a forced outage; it reports whether one was in force.
func (b *Breaker) Unforce() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	was := b.clock().Before(b.forcedUntil)
	b.forcedUntil = time.Time{}
	return was
}

// Forced returns the end of the forced outage in force, if any.
func (b *Breaker) Forced() (time.Time, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.forcedUntil.IsZero() || !b.clock().Before(b.forcedUntil) {
		return time.Time{}, false
	}
	return b.forcedUntil, true
}

// Token asks the upstream unless the breaker is open or the IdP asked to
// be left alone (Retry-After).
func (b *Breaker) Token(ctx context.Context, k Key) (*Token, error) {
	now := b.clock()
	b.mu.Lock()
	wait := b.notUntil.Sub(now)
	forced := b.forcedUntil.Sub(now)
	b.mu.Unlock()
	if forced > 0 {
		// Exactly what a real open breaker answers.
		return nil, &UnavailableError{RetryAfter: min(forced, b.timeout), Reason: "circuit breaker for upstream " + b.name + " is open"}
	}
	if wait > 0 {
		return nil, &UnavailableError{RetryAfter: wait, Reason: "upstream " + b.name + " asked to retry later"}
	}
	tok, err := b.cb.Execute(func() (*Token, error) { return b.next.Token(ctx, k) })
	switch {
	case errors.Is(err, gobreaker.ErrOpenState), errors.Is(err, gobreaker.ErrTooManyRequests):
		b.mu.Lock()
		left := b.timeout - now.Sub(b.openedAt)
		b.mu.Unlock()
		return nil, &UnavailableError{RetryAfter: max(left, time.Second), Reason: "circuit breaker for upstream " + b.name + " is open"}
	case err != nil:
		if ra := min(retryAfter(err), b.maxWait); ra > 0 {
			b.mu.Lock()
			if t := now.Add(ra); t.After(b.notUntil) {
				b.notUntil = t
			}
			b.mu.Unlock()
		}
		return nil, err
	}
	return tok, nil
}
