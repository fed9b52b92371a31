package workloadapi

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/proto"

	"github.com/nodeward/nodeward/internal/peercred"
)

// Reasons a call is refused by the limits (the `reason` label of
// nodeward_workload_api_limited_total, with connlimit's reasons).
const (
	LimitedRate             = "rate"
	LimitedMaxStreams       = "max_streams"
	LimitedMaxStreamsPerUID = "max_streams_per_uid"
)

// maxHandshake bounds how long a new connection may take to send its HTTP/2
// preface (gRPC's own default).
const maxHandshake = 120 * time.Second

// maxRateUIDs bounds the per-uid rate limiters kept; beyond it, limiters
// that are full again (as good as new) are dropped first.
const maxRateUIDs = 4096

// Limits bound what callers can make the server hold and do. A zero field
// means unlimited (no bound), except where noted.
type Limits struct {
	// MaxStreams caps the open streaming RPCs of all callers.
	MaxStreams int
	// MaxStreamsPerUID caps the open streaming RPCs of one caller uid.
	MaxStreamsPerUID int
	// MaxStreamsPerConn is gRPC's MaxConcurrentStreams: RPCs one connection
	// may have in flight (more wait in the client).
	MaxStreamsPerConn uint32
	// IdleTimeout closes a connection with no RPC in flight for this long,
	// and bounds the connection handshake.
	IdleTimeout time.Duration
	// Rate is the calls per second allowed per caller uid (a stream counts
	// when it opens; a unary call counts 1, plus 1 per 256 bytes of request beyond 2 KiB);
	// Burst the bucket depth.
	Rate  float64
	Burst int
}

// limiter enforces Limits per caller uid.
type limiter struct {
	cfg     Limits
	limited func(reason string)

	mu      sync.Mutex
	streams int
	perUID  map[uint32]int
	rates   map[uint32]*bucket
}

// bucket is one uid's rate budget, with what its last refused call needed:
// until the budget holds that much, further calls are refused before they
// are read (tap) and the uid's connections are read slowly (readDelay).
type bucket struct {
	rl   *rate.Limiter
	need atomic.Int64
}

// waiting reports whether b cannot pay for the call it last refused, and
// how long until it can.
func (b *bucket) waiting(r float64, now time.Time) (bool, time.Duration) {
	need := float64(max(1, b.need.Load()))
	tokens := b.rl.TokensAt(now)
	if tokens >= need {
		return false, 0
	}
	return true, time.Duration((need - tokens) / r * float64(time.Second))
}

func newLimiter(cfg Limits, limited func(string)) *limiter {
	if limited == nil {
		limited = func(string) {}
	}
	if cfg.Burst <= 0 {
		cfg.Burst = max(1, int(cfg.Rate))
	}
	return &limiter{cfg: cfg, limited: limited, perUID: make(map[uint32]int), rates: make(map[uint32]*bucket)}
}

// serverOptions are the gRPC options that bound connections and streams.
func (l *limiter) serverOptions() []grpc.ServerOption {
	opts := []grpc.ServerOption{grpc.InTapHandle(l.tap)}
	if l.cfg.MaxStreamsPerConn > 0 {
		opts = append(opts, grpc.MaxConcurrentStreams(l.cfg.MaxStreamsPerConn))
	}
	if l.cfg.IdleTimeout > 0 {
		opts = append(opts,
			grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: l.cfg.IdleTimeout}),
			grpc.ConnectionTimeout(min(l.cfg.IdleTimeout, maxHandshake)))
	}
	return opts
}

func (l *limiter) refuse(reason string) error {
	l.limited(reason)
	switch reason {
	case LimitedRate:
		return status.Error(codes.ResourceExhausted, "rate limit of this caller's uid exceeded; retry later")
	case LimitedMaxStreamsPerUID:
		return status.Error(codes.ResourceExhausted, "too many open streams for this caller's uid")
	default:
		return status.Error(codes.ResourceExhausted, "too many open streams")
	}
}

// A request up to costFree bytes costs one call of the rate budget; each
// costUnit bytes beyond that cost one more: a call with 32 audiences of
// 1 KiB costs 121 calls, a JWT-SVID validation (a token of 1-2 KiB) one.
const (
	costFree = 2048
	costUnit = 256
)

// callCost is what a request costs of its caller's rate budget. Large
// requests (many or long audiences, long tokens) are what make a call
// expensive: minting a JWT-SVID with 32 KiB of audiences holds the agent's
// CPU for about a millisecond, a hundred times a small one.
func callCost(req any) int {
	m, ok := req.(proto.Message)
	if !ok {
		return 1
	}
	n := proto.Size(m)
	if n <= costFree {
		return 1
	}
	return 1 + (n-costFree)/costUnit
}

// allowCall takes one call from the rate budget of ctx's caller uid. A
// context without peer credentials is let through: attestation refuses it.
func (l *limiter) allowCall(ctx context.Context) error {
	return l.allowCost(ctx, 1)
}

// allowCost takes cost calls (at most the burst) from the rate budget of
// ctx's caller uid.
func (l *limiter) allowCost(ctx context.Context, cost int) error {
	if l.cfg.Rate <= 0 {
		return nil
	}
	p, ok := peercred.FromContext(ctx)
	if !ok {
		return nil
	}
	l.mu.Lock()
	b := l.rates[p.UID]
	if b == nil {
		if len(l.rates) >= maxRateUIDs {
			l.pruneLocked()
		}
		b = &bucket{rl: rate.NewLimiter(rate.Limit(l.cfg.Rate), l.cfg.Burst)}
		l.rates[p.UID] = b
	}
	l.mu.Unlock()
	cost = min(cost, l.cfg.Burst)
	if !b.rl.AllowN(time.Now(), cost) {
		b.need.Store(int64(cost))
		return l.refuse(LimitedRate)
	}
	b.need.Store(1)
	return nil
}

// tap refuses a new call of a uid whose rate budget cannot pay for the call
// it last refused (or for one call), before gRPC reads and decodes its
// request: a flooding caller's refused calls then cost the agent little
// more than their headers.
func (l *limiter) tap(ctx context.Context, _ *tap.Info) (context.Context, error) {
	if l.cfg.Rate <= 0 {
		return ctx, nil
	}
	p, ok := peercred.FromContext(ctx)
	if !ok {
		return ctx, nil
	}
	l.mu.Lock()
	b := l.rates[p.UID]
	l.mu.Unlock()
	if b == nil {
		return ctx, nil
	}
	if wait, _ := b.waiting(l.cfg.Rate, time.Now()); wait {
		return ctx, l.refuse(LimitedRate)
	}
	return ctx, nil
}

// maxReadDelay bounds one read delay of a connection over its rate budget.
const maxReadDelay = time.Second

// ReadDelay is how long to wait before reading more from a connection of
// uid (see connlimit.Config.ReadDelay): while uid's rate budget cannot pay
// for the call it last refused, the time until it can (at most a second);
// else 0.
func (s *Server) ReadDelay(uid uint32) time.Duration { return s.lim.readDelay(uid) }

func (l *limiter) readDelay(uid uint32) time.Duration {
	if l.cfg.Rate <= 0 {
		return 0
	}
	l.mu.Lock()
	b := l.rates[uid]
	l.mu.Unlock()
	if b == nil {
		return 0
	}
	_, d := b.waiting(l.cfg.Rate, time.Now())
	return min(d, maxReadDelay)
}

// pruneLocked drops limiters that are full again; if none is, it drops
// some at random (those uids get a fresh burst). l.mu must be held.
func (l *limiter) pruneLocked() {
	now := time.Now()
	for uid, b := range l.rates {
		if b.rl.TokensAt(now) >= float64(l.cfg.Burst) {
			delete(l.rates, uid)
		}
	}
	for uid := range l.rates {
		if len(l.rates) < maxRateUIDs/2 {
			break
		}
		delete(l.rates, uid)
	}
}

// openStream counts a stream of ctx's caller against the caps; release
// (never nil) ends it.
func (l *limiter) openStream(ctx context.Context) (release func(), err error) {
	if err := l.allowCall(ctx); err != nil {
		return func() {}, err
	}
	uid := uint32(1<<32 - 1) // no peer credentials: one shared bucket
	if p, ok := peercred.FromContext(ctx); ok {
		uid = p.UID
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.cfg.MaxStreams > 0 && l.streams >= l.cfg.MaxStreams:
		return func() {}, l.refuse(LimitedMaxStreams)
	case l.cfg.MaxStreamsPerUID > 0 && l.perUID[uid] >= l.cfg.MaxStreamsPerUID:
		return func() {}, l.refuse(LimitedMaxStreamsPerUID)
	}
	l.streams++
	l.perUID[uid]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.streams--
			if l.perUID[uid]--; l.perUID[uid] <= 0 {
				delete(l.perUID, uid)
			}
		})
	}, nil
}
