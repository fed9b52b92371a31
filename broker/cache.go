package broker

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/singleflight"
)

// CacheConfig configures a Cache.
type CacheConfig struct {
	MaxEntries    int           // default 10,000
	RefreshWindow [2]float64    // fractions of a token's lifetime; default [0.5, 0.8]
	IdleTimeout   time.Duration // keys nobody asked for this long are not refreshed and age out; default 30m
	SafetyMargin  time.Duration // a token is never served later than expiry minus this; default 10s
	BaseBackoff   time.Duration // first refresh retry delay (full jitter); default 1s
	MaxBackoff    time.Duration // cap of the retry delay; default 5m
	Clock         func() time.Time
	Rand          func() float64 // [0,1) for jitter; default math/rand/v2
	// OnRefresh hears each background refresh's outcome (for metrics).
	OnRefresh func(k Key, err error)
	// OnEvict hears keys that aged out or were pushed out of the LRU.
	OnEvict func(k Key)
	// OnStore hears every new token stored for a key (first fetch and each
	// refresh), for file sinks.
	OnStore func(k Key, tok *Token)
	// Pinned keys never age out (file sinks keep their tokens fresh).
	Pinned func(k Key) bool
	// OnLookup hears whether each request was a hit.
	OnLookup func(hit bool)
	// Tracer records lookup and refresh spans (nil: tracing off).
	Tracer trace.Tracer
}

type entry struct {
	mu        sync.Mutex
	tok       *Token
	refreshAt time.Time
	lastUsed  time.Time
	failures  int
	nextTry   time.Time
	inflight  bool
	// origin is the span that last fetched tok (tracing on): a background
	// refresh's own root span links to it.
	origin trace.SpanContext
}

// Cache serves tokens from an LRU, makes one upstream call per key for
// concurrent misses, and refreshes tokens in the background at a jittered
// moment of their lifetime so a fleet never refreshes in lock-step. An IdP
// fault never drops a still-valid token.
type Cache struct {
	cfg  CacheConfig
	next Source
	lru  *lru.Cache[Key, *entry]
	sf   singleflight.Group
	wake chan struct{}
	wg   sync.WaitGroup
	sem  chan struct{}

	runMu  sync.Mutex
	runCtx context.Context // Run's context: upstream calls end with it
}

// NewCache returns a Cache in front of next.
func NewCache(next Source, cfg CacheConfig) (*Cache, error) {
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = 10000
	}
	if cfg.RefreshWindow == [2]float64{} {
		cfg.RefreshWindow = [2]float64{0.5, 0.8}
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 30 * time.Minute
	}
	if cfg.SafetyMargin <= 0 {
		cfg.SafetyMargin = 10 * time.Second
	}
	if cfg.BaseBackoff <= 0 {
		cfg.BaseBackoff = time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 5 * time.Minute
	}
	if cfg.Clock == nil {
		cfg.Clock = wallClock
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Float64
	}
	c := &Cache{cfg: cfg, next: next, wake: make(chan struct{}, 1), sem: make(chan struct{}, 16), runCtx: context.Background()}
	l, err := lru.NewWithEvict[Key, *entry](cfg.MaxEntries, func(k Key, _ *entry) {
		if cfg.OnEvict != nil {
			cfg.OnEvict(k)
		}
	})
	if err != nil {
		return nil, err
	}
	c.lru = l
	return c, nil
}

// now reads the clock without a monotonic reading: expiry follows the wall
// clock, which (unlike the monotonic one) keeps running through a suspend.
func (c *Cache) now() time.Time { return c.cfg.Clock().Round(0) }

// usable reports whether tok may be served at now (wall-clock times).
func (c *Cache) usable(tok *Token, now time.Time) bool {
	return tok != nil && now.Before(tok.ExpiresAt.Round(0).Add(-c.cfg.SafetyMargin))
}

// Token returns a cached token, or fetches one (once for concurrent callers).
func (c *Cache) Token(ctx context.Context, k Key) (*Token, error) {
	var span trace.Span
	if c.cfg.Tracer != nil {
		_, span = c.cfg.Tracer.Start(ctx, spanLookup, trace.WithAttributes(attrUpstream.String(k.Upstream)))
	}
	now := c.now()
	var seen *Token
	if e, ok := c.lru.Get(k); ok {
		e.mu.Lock()
		tok := e.tok
		seen = tok
		if c.usable(tok, now) {
			e.lastUsed = now
			e.mu.Unlock()
			if c.cfg.OnLookup != nil {
				c.cfg.OnLookup(true)
			}
			if span != nil {
				span.SetAttributes(attrCacheResult.String("hit"))
				span.End()
			}
			markHit(ctx)
			return tok, nil
		}
		e.mu.Unlock()
	}
	if c.cfg.OnLookup != nil {
		c.cfg.OnLookup(false)
	}
	if span != nil {
		result := "miss"
		if seen != nil {
			result = "stale" // cached, but too close to expiry to serve
		}
		span.SetAttributes(attrCacheResult.String(result))
		span.End() // the upstream exchange is the request's child, not the lookup's
	}
	return c.fetch(ctx, k, seen)
}

// fetch asks the next source, coalescing concurrent calls for one key;
// seen is the cached token the caller found unusable or due (nil: none). The
// upstream call is detached from a caller that gives up, so the others (and
// the cache) still get its answer; the upstream's own timeout bounds it, and
// it ends with the cache's Run context.
func (c *Cache) fetch(ctx context.Context, k Key, seen *Token) (*Token, error) {
	ch := c.sf.DoChan(k.String(), func() (any, error) {
		// A caller that missed the cache just before another call for k
		// stored its token (and left the flight) finds it here: one
		// upstream call per key, not two.
		if e, ok := c.lru.Peek(k); ok {
			e.mu.Lock()
			tok := e.tok
			e.mu.Unlock()
			if tok != seen && c.usable(tok, c.now()) {
				return tok, nil
			}
		}
		uctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		defer cancel()
		stop := context.AfterFunc(c.running(), cancel)
		defer stop()
		tok, err := c.next.Token(uctx, k)
		if err != nil {
			return nil, err
		}
		if !c.usable(tok, c.now()) {
			// Never cached: an upstream that answers such tokens would
			// otherwise be asked again at once, in a loop.
			return nil, &UpstreamError{Upstream: k.Upstream, Err: errShortLived}
		}
		c.store(k, tok)
		if c.cfg.Tracer != nil {
			if e, ok := c.lru.Peek(k); ok {
				e.mu.Lock()
				e.origin = trace.SpanContextFromContext(ctx)
				e.mu.Unlock()
			}
		}
		return tok, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*Token), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// running returns the context of Run (Background before Run).
func (c *Cache) running() context.Context {
	c.runMu.Lock()
	defer c.runMu.Unlock()
	return c.runCtx
}

func (c *Cache) store(k Key, tok *Token) {
	now := c.now()
	e, ok := c.lru.Peek(k)
	if !ok {
		e = &entry{}
	}
	// The refresh moment is drawn from the window of the token's life; when
	// that falls past its servable life (expiry minus the safety margin), from
	// the window of the servable life, so short-lived tokens keep their
	// jitter instead of all refreshing at the margin.
	issued := tok.IssuedAt.Round(0)
	servable := max(tok.ExpiresAt.Round(0).Add(-c.cfg.SafetyMargin).Sub(issued), 0)
	lo, hi := c.cfg.RefreshWindow[0], c.cfg.RefreshWindow[1]
	frac := lo + (hi-lo)*c.cfg.Rand()
	life := tok.ExpiresAt.Round(0).Sub(issued)
	e.mu.Lock()
	e.tok = tok
	e.refreshAt = issued.Add(time.Duration(float64(life) * frac))
	if e.refreshAt.After(issued.Add(servable)) {
		e.refreshAt = issued.Add(time.Duration(float64(servable) * frac))
	}
	e.failures = 0
	e.nextTry = time.Time{}
	if e.lastUsed.IsZero() {
		e.lastUsed = now
	}
	e.mu.Unlock()
	if !ok {
		c.lru.Add(k, e)
	}
	if c.cfg.OnStore != nil {
		c.cfg.OnStore(k, tok)
	}
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// RefreshDue starts background refreshes of the tokens whose moment has
// come, drops keys idle for longer than IdleTimeout, and returns when the
// next refresh is due (zero when nothing is cached).
func (c *Cache) RefreshDue() time.Time {
	now := c.now()
	var next time.Time
	for _, k := range c.lru.Keys() {
		e, ok := c.lru.Peek(k)
		if !ok {
			continue
		}
		e.mu.Lock()
		if now.Sub(e.lastUsed) > c.cfg.IdleTimeout && (c.cfg.Pinned == nil || !c.cfg.Pinned(k)) {
			e.mu.Unlock()
			c.lru.Remove(k)
			continue
		}
		due := e.refreshAt
		if e.nextTry.After(due) {
			due = e.nextTry
		}
		if e.inflight {
			e.mu.Unlock()
			continue
		}
		if !now.Before(due) {
			e.inflight = true
			e.mu.Unlock()
			c.wg.Add(1)
			go c.refresh(c.running(), k, e)
			continue
		}
		e.mu.Unlock()
		if next.IsZero() || due.Before(next) {
			next = due
		}
	}
	return next
}

func (c *Cache) refresh(ctx context.Context, k Key, e *entry) {
	defer c.wg.Done()
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		e.mu.Lock()
		e.inflight = false
		e.mu.Unlock()
		return
	}
	defer func() { <-c.sem }()
	e.mu.Lock()
	seen, origin, failures := e.tok, e.origin, e.failures
	e.mu.Unlock()
	var span trace.Span
	if c.cfg.Tracer != nil {
		// Its own root: the request that first fetched the token has long
		// ended; a link leads back to it.
		opts := []trace.SpanStartOption{trace.WithNewRoot(),
			trace.WithAttributes(attrUpstream.String(k.Upstream), attrRetryCount.Int(failures))}
		if origin.IsValid() {
			opts = append(opts, trace.WithLinks(trace.Link{SpanContext: origin}))
		}
		ctx, span = c.cfg.Tracer.Start(context.WithValue(ctx, retryCountKey{}, failures), spanRefresh, opts...)
	}
	_, err := c.fetch(ctx, k, seen)
	if span != nil {
		if err != nil {
			span.SetAttributes(attrReason.String(errorReason(err)))
			span.SetStatus(codes.Error, errorReason(err))
		}
		span.End()
	}
	now := c.now()
	e.mu.Lock()
	e.inflight = false
	if err != nil {
		// Keep serving the old token (until expiry minus the margin) and
		// retry with capped exponential backoff and full jitter, or later
		// when the IdP said so.
		e.failures++
		backoff := c.cfg.BaseBackoff << min(e.failures-1, 30)
		if backoff <= 0 || backoff > c.cfg.MaxBackoff {
			backoff = c.cfg.MaxBackoff
		}
		wait := time.Duration(c.cfg.Rand() * float64(backoff))
		if ra := retryAfter(err); ra > wait {
			wait = ra
		}
		e.nextTry = now.Add(wait)
	}
	e.mu.Unlock()
	if c.cfg.OnRefresh != nil {
		c.cfg.OnRefresh(k, err)
	}
}

// wait blocks until running refreshes finish (tests, shutdown).
func (c *Cache) wait() { c.wg.Wait() }

// Run refreshes tokens in the background until ctx is done.
func (c *Cache) Run(ctx context.Context) error {
	c.runMu.Lock()
	c.runCtx = ctx
	c.runMu.Unlock()
	t := time.NewTimer(time.Second)
	defer t.Stop()
	defer c.wait()
	for {
		next := c.RefreshDue()
		// Wake at the next refresh, and at least every 5 s to age out idle keys.
		d := 5 * time.Second
		if !next.IsZero() {
			d = min(d, max(next.Sub(c.now()), 10*time.Millisecond))
		}
		t.Reset(d)
		select {
		case <-ctx.Done():
			return nil
		case <-c.wake:
			if !t.Stop() {
				select {
				case <-t.C:
				default:
				}
			}
		case <-t.C:
		}
	}
}

// peek returns the token cached for k (nil: none), without touching the LRU.
func (c *Cache) peek(k Key) *Token {
	e, ok := c.lru.Peek(k)
	if !ok {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.tok
}

// Len returns the number of cached keys.
func (c *Cache) Len() int { return c.lru.Len() }

// Purge drops every cached token whose key matches drop (revocation).
func (c *Cache) Purge(drop func(Key) bool) int {
	n := 0
	for _, k := range c.lru.Keys() {
		if drop(k) {
			c.lru.Remove(k)
			n++
		}
	}
	return n
}
