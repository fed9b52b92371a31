package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nodeward/nodeward/internal/audit"
	"github.com/nodeward/nodeward/internal/peercred"
	"github.com/nodeward/nodeward/sinks"
)

// Broker is a running token broker.
type Broker struct {
	cfg       *Config
	log       *slog.Logger
	cache     *Cache
	breakers  map[string]*Breaker
	upstreams map[string]*Upstream
	svids     *agentSVIDs
	api       *API
	sinks     []*sink
	svidSinks []*sinks.Sink
	sinkFor   sync.Map // Key -> *sink
	metrics   *Metrics
	registry  *prometheus.Registry
	audit     *audit.Logger
	limiter   *limiter
	clock     func() time.Time
	tracer    trace.Tracer // nil: tracing off

	// wg tracks the goroutines Serve starts outside its errgroup (sinks,
	// on_rotate actions): Serve returns only once they have ended.
	wg sync.WaitGroup

	mu          sync.Mutex
	addrs       []string
	tcpAddrs    []string
	metricsAddr string
	runCtx      context.Context       // Serve's context (nil before Serve)
	sinkWake    chan struct{}         // closed and replaced when the identity changes
	onToken     func(spiffeID string) // set by OnToken

	forceTimers map[string]*time.Timer // upstream -> end of its forced outage (game day)

	readyCh chan struct{} // closed once Serve serves
	ready   sync.Once
}

// Serving is closed once the broker's sockets accept requests.
func (b *Broker) Serving() <-chan struct{} { return b.readyCh }

// agentSVIDs fetches JWT-SVIDs from the agent's Workload API and remembers
// the broker's SPIFFE ID.
type agentSVIDs struct {
	addr   string
	mu     sync.Mutex
	client *workloadapi.Client
	id     atomic.Value // string
}

func (a *agentSVIDs) get(ctx context.Context) (*workloadapi.Client, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.client != nil {
		return a.client, nil
	}
	c, err := workloadapi.New(ctx, workloadapi.WithAddr(a.addr))
	if err != nil {
		return nil, err
	}
	a.client = c
	return c, nil
}

// FetchJWTSVID implements SVIDFetcher.
func (a *agentSVIDs) FetchJWTSVID(ctx context.Context, audience string) (string, string, error) {
	c, err := a.get(ctx)
	if err != nil {
		return "", "", err
	}
	svid, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience})
	if err != nil {
		return "", "", err
	}
	a.id.Store(svid.ID.String())
	return svid.Marshal(), svid.ID.String(), nil
}

// identity returns the broker's SPIFFE ID, asking the agent (for a JWT-SVID
// of audience) the first time, so that the first cache key already holds it.
func (a *agentSVIDs) identity(ctx context.Context, audience string) (string, error) {
	if s, _ := a.id.Load().(string); s != "" {
		return s, nil
	}
	_, id, err := a.FetchJWTSVID(ctx, audience)
	return id, err
}

// watchIdentity follows the broker's identity on the agent's X.509 stream:
// when it changes or is revoked, tokens minted from the old identity are
// dropped at once and never served again.
func (b *Broker) watchIdentity(ctx context.Context) {
	c, err := b.svids.get(ctx)
	if err != nil {
		b.log.Warn("cannot watch the broker's identity", "err", err)
		return
	}
	_ = c.WatchX509Context(ctx, identityWatcher{b: b})
}

type identityWatcher struct{ b *Broker }

func (w identityWatcher) OnX509ContextUpdate(xc *workloadapi.X509Context) {
	id := ""
	if svid := xc.DefaultSVID(); svid != nil {
		id = svid.ID.String()
	}
	w.b.setIdentity(id)
}

func (w identityWatcher) OnX509ContextWatchError(err error) {
	if status.Code(err) == codes.PermissionDenied {
		w.b.setIdentity("")
	}
}

// setIdentity records the broker's current SPIFFE ID and purges tokens of
// any other; the token files of those tokens are removed (their tokens
// can no longer be refreshed, and the identity they stood for is gone).
func (b *Broker) setIdentity(id string) {
	old, _ := b.svids.id.Load().(string)
	b.svids.id.Store(id)
	if n := b.cache.Purge(func(k Key) bool { return k.SPIFFEID != id }); n > 0 || old != id {
		b.log.Info("broker identity changed; tokens of the old identity dropped", "from", old, "to", id, "dropped", n)
	}
	b.sinkFor.Range(func(k, v any) bool {
		if k.(Key).SPIFFEID != id {
			b.sinkFor.Delete(k)
			v.(*sink).remove()
		}
		return true
	})
	if id != "" && old != id {
		b.sinksWake()
	}
}

func (a *agentSVIDs) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.client != nil {
		_ = a.client.Close()
	}
}

// router sends each key to its upstream's (instrumented) breaker.
type router map[string]Source

func (r router) Token(ctx context.Context, k Key) (*Token, error) {
	b, ok := r[k.Upstream]
	if !ok {
		return nil, ErrUnknownUpstream
	}
	return b.Token(ctx, k)
}

// New builds a Broker from cfg.
func New(cfg *Config, log *slog.Logger) (*Broker, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Broker{cfg: cfg, log: log, readyCh: make(chan struct{}), breakers: map[string]*Breaker{}, upstreams: map[string]*Upstream{},
		svids: &agentSVIDs{addr: cfg.WorkloadSocket}, registry: prometheus.NewRegistry()}
	b.metrics = NewMetrics(b.registry, func() float64 {
		if b.cache == nil {
			return 0
		}
		return float64(b.cache.Len())
	})
	b.clock = cfg.clock
	if b.clock == nil {
		b.clock = wallClock
	}
	al, err := audit.Open(cfg.AuditLog)
	if err != nil {
		return nil, fmt.Errorf("broker audit_log: %w", err)
	}
	al.SetHooks(audit.Hooks{Lost: b.metrics.AuditLost.Inc, Dropped: b.metrics.AuditDropped.Inc})
	b.audit = al
	cc := cfg.CacheConfig()
	cc.Clock = b.clock
	margin := cc.SafetyMargin
	if margin <= 0 {
		margin = 10 * time.Second
	}
	for _, uf := range cfg.Upstreams {
		ucfg := uf.config()
		ucfg.MinLifetime = margin
		ucfg.MaxRetryAfter = time.Duration(cfg.Breaker.MaxRetryAfter)
		u, err := NewUpstream(ucfg, b.svids, b.clock)
		if err != nil {
			return nil, err
		}
		b.upstreams[u.Name()] = u
		b.metrics.BreakerState.WithLabelValues(u.Name()).Set(0)
		b.metrics.BreakerForced.WithLabelValues(u.Name()).Set(0)
		b.breakers[u.Name()] = NewBreaker(u.Name(), u, BreakerConfig{
			ConsecutiveFailures: cfg.Breaker.ConsecutiveFailures,
			OpenTimeout:         time.Duration(cfg.Breaker.OpenTimeout),
			MaxRetryAfter:       time.Duration(cfg.Breaker.MaxRetryAfter),
			OnStateChange: func(upstream, from, to string) {
				b.metrics.BreakerState.WithLabelValues(upstream).Set(breakerValue(to))
				log.Warn("circuit breaker changed state", "upstream", upstream, "from", from, "to", to)
				b.auditLog(audit.Record{Event: "breaker", Reason: from + "->" + to, Upstream: upstream, Endpoint: u.cfg.TokenEndpoint})
			},
		}, b.clock)
	}
	for _, sf := range cfg.SVIDFiles {
		s, err := sinks.New(sf, log.With("component", "svid_files"))
		if err != nil {
			return nil, err
		}
		b.svidSinks = append(b.svidSinks, s)
	}
	for _, sf := range cfg.Sinks {
		mode, _ := parseMode(sf.Mode)
		action, err := sinks.NewAction(sf.OnRotate, log.With("component", "sinks"))
		if err != nil {
			return nil, err
		}
		s := &sink{key: sinkKey(sf, b.upstreams[sf.Upstream].Scopes()), path: sf.Path, mode: mode, uid: -1, gid: -1, log: log, action: action, run: b.runAction}
		if sf.Owner != nil {
			s.uid = *sf.Owner
		}
		if sf.Group != nil {
			s.gid = *sf.Group
		}
		b.sinks = append(b.sinks, s)
	}
	cc.OnStore = func(k Key, tok *Token) {
		if s, ok := b.sinkFor.Load(k); ok {
			s.(*sink).write(tok)
		}
	}
	cc.Pinned = func(k Key) bool { _, ok := b.sinkFor.Load(k); return ok }
	cc.OnLookup = func(hit bool) {
		if hit {
			b.metrics.CacheHits.Inc()
		} else {
			b.metrics.CacheMisses.Inc()
		}
	}
	cc.OnEvict = func(k Key) {
		b.metrics.Evictions.Inc()
		b.limiter.forget(k)
	}
	cc.OnRefresh = func(k Key, err error) {
		result := "ok"
		if err != nil {
			result = "error"
		}
		b.metrics.Refreshes.WithLabelValues(result).Inc()
		rec := audit.Record{Event: "token_refresh", Kind: "token", Decision: "allow", Reason: "upstream"}
		if err != nil {
			log.Warn("token refresh failed; serving the cached token until it expires", "upstream", k.Upstream, "audience", k.Audience, "err", err)
			rec.Decision, rec.Reason = "deny", errorReason(err)
		} else {
			tokenFields(&rec, b.cache.peek(k))
		}
		b.auditKey(&rec, k)
		b.auditLog(rec)
	}
	rt := router{}
	for name, br := range b.breakers {
		rt[name] = instrumented{name: name, next: br, m: b.metrics, b: b}
	}
	b.limiter = newLimiter(rt, cfg.LimitsConfig(), func(kind string) { b.metrics.RateLimited.WithLabelValues(kind).Inc() })
	c, err := NewCache(b.limiter, cc)
	if err != nil {
		return nil, err
	}
	b.cache = c
	b.api = &API{
		tokens: func(name string) (Source, []string, bool) {
			u, ok := b.upstreams[name]
			if !ok {
				return nil, nil, false
			}
			return b.cache, u.Scopes(), true
		},
		identity: func(ctx context.Context) (string, error) {
			return b.svids.identity(ctx, b.upstreams[cfg.Upstreams[0].Name].cfg.SVIDAudience)
		},
		allowUIDs:  cfg.AllowUIDs,
		allowGIDs:  cfg.AllowGIDs,
		log:        log,
		clock:      b.clock,
		tcpHosts:   b.tcpHosts,
		onDecision: b.auditDecision,
		force:      b.serveForce,
		onRequest: func(upstream string, status int, _ time.Duration) {
			b.metrics.Requests.WithLabelValues(upstream, strconv.Itoa(status)).Inc()
		},
	}
	return b, nil
}

// tcpHosts returns the Host values accepted on the loopback TCP listener.
func (b *Broker) tcpHosts() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.tcpAddrs
}

// running returns Serve's context (Background before Serve).
func (b *Broker) running() context.Context {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.runCtx == nil {
		return context.Background()
	}
	return b.runCtx
}

// runAction runs a sink's on_rotate action off the refresh path, on
// Serve's context, tracked so that Serve waits for it.
func (b *Broker) runAction(a *sinks.Action, ev sinks.Event) {
	ctx := b.running()
	if ctx.Err() != nil {
		return
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		a.RunEvent(ctx, ev)
	}()
}

// sinksWake wakes the token file loops (the identity changed).
func (b *Broker) sinksWake() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sinkWake != nil {
		close(b.sinkWake)
	}
	b.sinkWake = make(chan struct{})
}

// sinkWaiter returns a channel closed at the next identity change.
func (b *Broker) sinkWaiter() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sinkWake == nil {
		b.sinkWake = make(chan struct{})
	}
	return b.sinkWake
}

// Addrs returns the addresses the broker listens on, once it does.
func (b *Broker) Addrs() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.addrs...)
}

// Run serves the HTTP API and refreshes tokens until ctx is done.
func (b *Broker) Run(ctx context.Context) error { return b.Serve(ctx, nil) }

// Serve is Run with the Unix socket already listening (for example handed
// over by systemd socket activation); nil listens on the configured path.
func (b *Broker) Serve(ctx context.Context, unixL net.Listener) error {
	defer b.svids.close()
	defer func() { _ = b.audit.Close() }()
	ctx, cancel := context.WithCancel(ctx)
	defer b.wg.Wait() // after cancel: sinks and on_rotate actions end with ctx
	defer cancel()
	b.mu.Lock()
	b.runCtx = ctx
	b.mu.Unlock()
	var listeners []net.Listener
	if unixL != nil {
		listeners = append(listeners, unixL)
	} else if b.cfg.Listen != "" {
		if err := os.MkdirAll(filepath.Dir(b.cfg.Listen), 0o755); err != nil {
			return fmt.Errorf("listen: %w", err)
		}
		l, err := peercred.Listen(b.cfg.Listen)
		if err != nil {
			return fmt.Errorf("listen: %w", err)
		}
		listeners = append(listeners, l)
	}
	if b.cfg.ListenTCP != "" {
		l, err := net.Listen("tcp", b.cfg.ListenTCP)
		if err != nil {
			for _, l := range listeners {
				_ = l.Close()
			}
			return fmt.Errorf("listen_tcp: %w", err)
		}
		listeners = append(listeners, l)
	}
	b.mu.Lock()
	for _, l := range listeners {
		b.addrs = append(b.addrs, l.Addr().String())
		if _, ok := l.Addr().(*net.TCPAddr); ok {
			b.tcpAddrs = append(b.tcpAddrs, tcpHostsFor(l.Addr().String())...)
		}
	}
	b.mu.Unlock()
	if b.cfg.MetricsListen != "" {
		ml, err := net.Listen("tcp", b.cfg.MetricsListen)
		if err != nil {
			for _, l := range listeners {
				_ = l.Close()
			}
			return fmt.Errorf("metrics_listen: %w", err)
		}
		b.mu.Lock()
		b.metricsAddr = ml.Addr().String()
		b.mu.Unlock()
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(b.registry, promhttp.HandlerOpts{}))
		mux.HandleFunc("GET /v1/status", b.serveStatus)
		msrv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		b.wg.Add(1)
		go func() { defer b.wg.Done(); _ = msrv.Serve(ml) }()
		defer msrv.Close()
	}
	srv := &http.Server{Handler: b.api.Handler(), ConnContext: ConnContext, ReadHeaderTimeout: 5 * time.Second}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return b.cache.Run(ctx) })
	g.Go(func() error { b.watchIdentity(ctx); return nil })
	b.runSinks(ctx)
	for _, s := range b.svidSinks {
		g.Go(func() error {
			c, err := b.svids.get(ctx)
			if err != nil {
				return fmt.Errorf("svid_files: workload API client: %w", err)
			}
			return s.Run(ctx, c)
		})
	}
	for _, l := range listeners {
		g.Go(func() error {
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	g.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	})
	b.ready.Do(func() { close(b.readyCh) })
	b.log.Info("nodeward broker serving", "listen", b.Addrs(), "upstreams", len(b.upstreams))
	return g.Wait()
}

// BreakerState returns each upstream's breaker state.
func (b *Broker) BreakerState() map[string]string {
	out := make(map[string]string, len(b.breakers))
	for n, br := range b.breakers {
		out[n] = br.State()
	}
	return out
}
