package broker

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"golang.org/x/time/rate"
)

// LimitsConfig bounds what one caller uid can make the broker ask of the
// IdPs: upstream calls (cache misses) per second and in a burst, and cached
// keys it created.
type LimitsConfig struct {
	UpstreamCallsPerSecond float64 // default 5
	Burst                  int     // default 50
	KeysPerCaller          int     // default 500
}

// limiter is a Source in front of the upstreams that admits a cache miss
// only while its caller uid has upstream calls and keys left. Background
// refreshes (no caller) pass.
type limiter struct {
	next    Source
	cfg     LimitsConfig
	onLimit func(reason string)

	mu     sync.Mutex
	uids   *simplelru.LRU[uint32, *rate.Limiter]
	owner  map[Key]uint32
	counts map[uint32]int
}

func newLimiter(next Source, cfg LimitsConfig, onLimit func(string)) *limiter {
	if cfg.UpstreamCallsPerSecond <= 0 {
		cfg.UpstreamCallsPerSecond = 5
	}
	if cfg.Burst <= 0 {
		cfg.Burst = 50
	}
	if cfg.KeysPerCaller <= 0 {
		cfg.KeysPerCaller = 500
	}
	l, _ := simplelru.NewLRU[uint32, *rate.Limiter](4096, nil) // only fails for a size <= 0
	return &limiter{next: next, cfg: cfg, onLimit: onLimit, uids: l, owner: map[Key]uint32{}, counts: map[uint32]int{}}
}

// Token implements Source.
func (l *limiter) Token(ctx context.Context, k Key) (*Token, error) {
	c := callerOf(ctx)
	if c == nil {
		return l.next.Token(ctx, k) // a background refresh or a file sink
	}
	isNew, rerr := l.admit(c.uid, k)
	if rerr != nil {
		if l.onLimit != nil {
			l.onLimit(rerr.kind)
		}
		return nil, rerr
	}
	tok, err := l.next.Token(ctx, k)
	if err != nil && isNew {
		l.forget(k) // nothing was cached for it
	}
	return tok, err
}

// admit spends one upstream call of uid's budget; isNew says whether k is
// a key uid has not created before.
func (l *limiter) admit(uid uint32, k Key) (isNew bool, _ *RateLimitedError) {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, known := l.owner[k]
	if !known && l.counts[uid] >= l.cfg.KeysPerCaller {
		return false, &RateLimitedError{RetryAfter: time.Minute, Reason: "too many distinct tokens for this caller", kind: "keys"}
	}
	lim, ok := l.uids.Get(uid)
	if !ok {
		lim = rate.NewLimiter(rate.Limit(l.cfg.UpstreamCallsPerSecond), l.cfg.Burst)
		l.uids.Add(uid, lim)
	}
	r := lim.Reserve()
	if d := r.Delay(); d > 0 {
		r.Cancel()
		return false, &RateLimitedError{RetryAfter: d, Reason: "too many upstream token requests from this caller", kind: "upstream_calls"}
	}
	if !known {
		l.owner[k] = uid
		l.counts[uid]++
	}
	return !known, nil
}

// forget releases a key that left the cache (or was never stored).
func (l *limiter) forget(k Key) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if uid, ok := l.owner[k]; ok {
		delete(l.owner, k)
		if l.counts[uid]--; l.counts[uid] <= 0 {
			delete(l.counts, uid)
		}
	}
}
