// Package agent is the nodeward daemon: it loads the configuration, the
// local CA and the policy, attests callers of the Workload API socket and
// serves them SVIDs, rotates them, and serves the admin endpoints.
//
// Security: the agent trusts only what the kernel reports about a caller
// (peer credentials pinned by a pidfd, /proc) and its own configuration.
// Callers with no matching entry are denied. Key files live in data_dir
// (0700, keys 0600) and key material never reaches logs.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/nodeward/nodeward/agent/ca"
	"github.com/nodeward/nodeward/agent/config"
	"github.com/nodeward/nodeward/agent/identity"
	"github.com/nodeward/nodeward/agent/inventory"
	"github.com/nodeward/nodeward/agent/metrics"
	"github.com/nodeward/nodeward/agent/policy"
	"github.com/nodeward/nodeward/attestors/tpm"
	"github.com/nodeward/nodeward/attestors/unix"
	"github.com/nodeward/nodeward/internal/audit"
	"github.com/nodeward/nodeward/internal/peercred"
	"github.com/nodeward/nodeward/workloadapi"
)

// Agent is one running nodeward agent.
type Agent struct {
	log         *slog.Logger
	ca          *ca.CA
	store       *identity.Store
	inv         *inventory.Inventory
	unix        *unix.Attestor
	attestors   []WorkloadAttestor
	workers     *workers // set while serving
	server      *workloadapi.Server
	metrics     *metrics.Metrics
	extraStatus func() any // set by AttachStatus
	audit       *audit.Logger
	obs         *observer
	limits      *limitsState
	fleet       *fleetMode // nil in standalone mode
	guard       serverGuardrails
	federation  *federationMode // nil without a federation section
	susp        suspensions     // game day: entries taken away for now
	node        *node           // nil without a tpm section
	tpm         *tpm.TPM        // the TPM, when configured
	ownsTPM     bool            // opened by New (closed when Serve ends)

	mu  sync.Mutex
	cfg *config.Agent

	serving atomic.Bool
	readyCh chan struct{} // closed once Serve serves
	ready   sync.Once
	addr    atomic.Value // admin listener address (string)
	started time.Time
}

// Option changes how New builds the agent.
type Option func(*options)

type options struct {
	tpm    *tpm.TPM
	ctx    context.Context
	tracer trace.Tracer
}

// WithContext makes New give up when ctx is done (SIGTERM or SIGINT
// during start, while a TPM does not answer).
func WithContext(ctx context.Context) Option { return func(o *options) { o.ctx = ctx } }

// WithTPM makes the agent use tp for its tpm section instead of opening
// the configured device or address (tests hand in a swtpm they also
// drive). The caller keeps ownership of tp.
func WithTPM(tp *tpm.TPM) Option { return func(o *options) { o.tpm = tp } }

// WithTracer makes the Workload API record spans with t (internal/tracing;
// nil or absent: tracing off).
func WithTracer(t trace.Tracer) Option { return func(o *options) { o.tracer = t } }

// New validates cfg, loads (or creates) the CA and builds the policy index.
// With a tpm section it opens the TPM, attests the node and, with ca.key
// tpm, loads the CA root key from it; any TPM failure is an error (never a
// fallback to software keys). It does not listen yet; Run does.
func New(cfg *config.Agent, log *slog.Logger, opts ...Option) (a *Agent, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	o := options{ctx: context.Background()}
	for _, opt := range opts {
		opt(&o)
	}
	ctx := o.ctx
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("trust_domain: %w", err)
	}
	caCfg := ca.Config{TrustDomain: td, Dir: cfg.DataDir, Logger: log, JWTIssuer: cfg.JWTIssuer,
		KeyTTL: time.Duration(cfg.CA.TTL), JWTKeyTTL: time.Duration(cfg.CA.JWTKeyTTL),
		OnEvent: func(e ca.KeyEvent) { a.caEvent(e) }}
	if cfg.CA.NoRotate {
		caCfg.KeyTTL, caCfg.JWTKeyTTL = 0, 0
	}
	var (
		tp      *tpm.TPM
		ownsTPM bool
		nd      *node
	)
	if cfg.TPM != nil {
		timeout := time.Duration(cfg.TPM.StartupTimeout)
		if timeout <= 0 {
			timeout = config.DefaultStartupTimeout
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
		if tp = o.tpm; tp == nil {
			if tp, err = openTPM(ctx, cfg.TPM.Addr()); err != nil {
				return nil, fmt.Errorf("tpm (%s): %w", cfg.TPM.Addr(), err)
			}
			ownsTPM = true
			defer func() {
				if err != nil {
					// A hung TPM makes Close wait for the running
					// operation: do not hold up the exit for it.
					go tp.Close()
				}
			}()
		}
		// In fleet mode the TPM proves the node to the server
		// (tpm_devid); node facts for local entries are not used.
		if cfg.Server == nil {
			if nd, err = startNode(ctx, tp, cfg.TPM, td, log); err != nil {
				return nil, err
			}
		}
		if cfg.CA.Key == "tpm" {
			handle := cfg.CA.TPMHandle
			if handle == 0 {
				handle = config.DefaultTPMKeyHandle
			}
			// The CA loads (or creates) its root keys at handle and
			// handle+1 (TPM root rotation, docs/keys.md).
			caCfg.TPMKeys, caCfg.TPMHandle = tpmCAKeys{tp}, handle
			caCfg.IntermediateTTL = time.Duration(cfg.CA.IntermediateTTL)
		}
	}
	var (
		c  *ca.CA
		ix = policy.Empty
	)
	if cfg.Server == nil {
		if c, err = loadCA(ctx, caCfg); err != nil {
			return nil, fmt.Errorf("load CA: %w", err)
		}
		if ix, err = buildIndex(cfg, log); err != nil {
			return nil, err
		}
	}
	al, err := audit.Open(cfg.AuditLog)
	if err != nil {
		return nil, err
	}
	a = &Agent{log: log, ca: c, cfg: cfg, started: time.Now(), audit: al, readyCh: make(chan struct{}),
		node: nd, tpm: tp, ownsTPM: ownsTPM}
	a.metrics = metrics.NewWith(
		func() float64 { return float64(a.store.Stats().Entries) },
		func() float64 { return float64(a.store.Stats().X509SVIDs) },
		func() float64 {
			if a.node == nil {
				return 0
			}
			if t := a.node.last.Load(); t != nil {
				return float64(t.Unix())
			}
			return 0
		},
		func() float64 {
			if a.ca == nil {
				return 0
			}
			if in := a.ca.Intermediate(); in != nil {
				return float64(in.NotAfter.Unix())
			}
			return 0
		},
	)
	if a.inv, err = openInventory(cfg.DataDir, time.Duration(cfg.Guardrails.StaleAfter), a); err != nil {
		return nil, err
	}
	a.inv.SyncPolicy(inventoryEntries(ix.Entries()))
	a.metrics.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "nodeward_stale_entries", Help: "Registration entries not issued for guardrails.stale_after (identity inventory).",
	}, func() float64 { return float64(a.inv.StaleCount()) }))
	a.obs = &observer{m: a.metrics, audit: al, log: log}
	if c != nil {
		a.metrics.Registry.MustRegister(newCACollector(c))
	}
	dropped := a.metrics.AuditDropped.WithLabelValues("rate_limited")
	al.SetHooks(audit.Hooks{Lost: a.metrics.AuditErrors.Inc, Dropped: dropped.Inc})
	a.limits = newLimits(cfg.Limits, a.metrics, log)
	a.unix, a.attestors = BuiltIns(log)
	storeCfg := identity.Config{CA: c, Index: ix, Logger: log, Observer: a.obs, JWTCacheBytes: cfg.Limits.JWTCacheBytes}
	if cfg.Server != nil {
		if a.fleet, err = a.newFleet(ctx, cfg, td); err != nil {
			return nil, err
		}
		storeCfg.CA, storeCfg.Source = nil, a.fleet.src
		a.registerFleetMetrics()
	}
	a.store, err = identity.New(storeCfg)
	if err != nil {
		return nil, err
	}
	if a.federation, err = a.newFederation(cfg, td); err != nil {
		return nil, err
	}
	if a.fleet != nil {
		// The first sync, so that a start with a reachable server serves
		// at once; without one the agent serves nothing yet and syncs on.
		sctx, cancel := context.WithTimeout(ctx, initialSyncTimeout)
		err := a.fleet.src.Sync(sctx)
		cancel()
		if err != nil {
			log.Warn("first sync with the server failed; retrying in the background", "server", cfg.Server.Address, "err", err)
		}
	}
	a.unix.SetHashing(ix.Uses("unix", "sha256"))
	a.server, err = workloadapi.New(workloadapi.Config{Backend: backend{a: a}, Logger: log, Observer: a.obs, Audit: al, Recorder: recorder{a.inv},
		Limits: a.limits.server(), Limited: a.limits.limited, Tracer: o.tracer})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// openTPM runs tpm.Open, giving up when ctx is done: opening a TCP TPM
// dials without a context, and a connect to a hung simulator whose accept
// queue is full blocks for minutes. A TPM opened after the give-up is
// closed.
func openTPM(ctx context.Context, addr string) (*tpm.TPM, error) {
	type result struct {
		tp  *tpm.TPM
		err error
	}
	done := make(chan result, 1)
	go func() {
		tp, err := tpm.Open(ctx, addr)
		done <- result{tp, err}
	}()
	select {
	case r := <-done:
		return r.tp, r.err
	case <-ctx.Done():
		go func() {
			if r := <-done; r.tp != nil {
				_ = r.tp.Close()
			}
		}()
		return nil, fmt.Errorf("open: %w", context.Cause(ctx))
	}
}

// loadCA runs ca.LoadOrCreate, giving up when ctx is done: with a TPM-held
// root it signs the first intermediate, and a crypto.Signer takes no
// context. On give-up the load finishes (or times out in the TPM layer) in
// the background and its result is dropped.
func loadCA(ctx context.Context, cfg ca.Config) (*ca.CA, error) {
	if cfg.RootSigner == nil && cfg.TPMKeys == nil {
		return ca.LoadOrCreate(cfg)
	}
	type result struct {
		c   *ca.CA
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ca.LoadOrCreate(cfg)
		done <- result{c, err}
	}()
	select {
	case r := <-done:
		return r.c, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("ca.key tpm: first intermediate: %w", context.Cause(ctx))
	}
}

// buildIndex turns the configured entries into a policy index, after the
// guardrails: any error-level finding refuses the whole policy.
func buildIndex(cfg *config.Agent, log *slog.Logger) (*policy.Index, error) {
	entries := PolicyEntries(cfg.Entries)
	findings := policy.Check(entries, CheckOptions(cfg, time.Now()))
	var errs []string
	for _, f := range findings {
		if f.Severity == policy.SeverityError {
			errs = append(errs, f.String())
		} else if log != nil {
			log.Warn("policy: "+f.Code, "entry", f.Pos, "spiffe_id", f.SPIFFEID, "finding", f.Message)
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w:\n  %s", ErrPolicyRefused, strings.Join(errs, "\n  "))
	}
	ix, err := policy.NewIndex(entries)
	if err != nil {
		return nil, fmt.Errorf("entries: %w", err)
	}
	return ix, nil
}

// ErrPolicyRefused: the guardrails found errors in the entries.
var ErrPolicyRefused = errors.New("policy refused by guardrails")

// PolicyEntries converts configured entries to policy entries.
func PolicyEntries(in []config.Entry) []*policy.Entry {
	entries := make([]*policy.Entry, 0, len(in))
	for _, e := range in {
		entries = append(entries, &policy.Entry{
			ID:        e.ID,
			SPIFFEID:  e.ParsedID,
			Selectors: e.ParsedSelectors,
			X509TTL:   time.Duration(e.X509TTL),
			JWTTTL:    time.Duration(e.JWTTTL),
			DNSNames:  e.DNSNames,
			Hint:      e.Hint,
			Owner:     e.Owner,
			ExpiresAt: e.Expires,
			Pos:       e.Pos,

			FederatesWith: e.FederatesWith,
		})
	}
	return entries
}

// CheckOptions returns the guardrail settings of cfg.
func CheckOptions(cfg *config.Agent, now time.Time) policy.CheckOptions {
	opts := policy.CheckOptions{
		MaxX509TTL:     time.Duration(cfg.Guardrails.MaxX509TTL),
		MaxJWTTTL:      time.Duration(cfg.Guardrails.MaxJWTTTL),
		RequireOwner:   cfg.Guardrails.RequireOwner,
		RequireExpires: cfg.Guardrails.RequireExpires,
		Now:            now,
	}
	if td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain); err == nil {
		opts.TrustDomain = td
	}
	return opts
}

// config returns the current configuration (Reload swaps it under a.mu).
func (a *Agent) config() *config.Agent {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cfg
}

// Store returns the identity store (for status and tests).
func (a *Agent) Store() *identity.Store { return a.store }

// Ready reports whether the CA is loaded, the Workload API socket serves
// and the CA can issue a valid SVID now (see NotReadyReason).
func (a *Agent) Ready() bool { return a.NotReadyReason() == "" }

// NotReadyReason says why the agent is not ready, "" when it is: not
// serving yet, or the CA's TPM-signed intermediate expired (or is about
// to) and could not be renewed, so nothing valid can be issued.
func (a *Agent) NotReadyReason() string {
	if !a.serving.Load() {
		return "not serving"
	}
	if a.ca != nil && !a.ca.CanIssue() {
		return "CA intermediate expired and not renewed (TPM not answering?): no valid SVID can be issued"
	}
	return ""
}

// Serving is closed once the agent first serves (the CA is loaded and the
// Workload API socket accepts): the moment to tell systemd READY=1.
func (a *Agent) Serving() <-chan struct{} { return a.readyCh }

// Summary is a one-line state for systemd's STATUS= and logs.
func (a *Agent) Summary() string {
	st := a.store.Stats()
	streams := 0
	for _, n := range a.obs.openStreams() {
		streams += n
	}
	return fmt.Sprintf("serving %d entries, %d X.509 identities, %d JWT-SVIDs cached, %d open streams",
		st.Entries, len(a.store.X509Snapshot()), st.JWTSVIDs, streams)
}

// AdminAddr returns the admin listener's address once it listens, else "".
func (a *Agent) AdminAddr() string {
	s, _ := a.addr.Load().(string)
	return s
}

// Reload applies a new configuration's entries atomically: open streams get
// the new state. Settings that need a restart (trust_domain, socket_path,
// data_dir, admin_listen) are reported and left unchanged. On error the old
// policy keeps serving.
func (a *Agent) Reload(cfg *config.Agent) error {
	if a.fleet != nil {
		return a.reloadFleet(cfg)
	}
	ix, err := buildIndex(cfg, a.log)
	if err != nil {
		a.ReloadFailed(err)
		return err
	}
	a.mu.Lock()
	old := a.cfg
	a.cfg = cfg
	a.mu.Unlock()
	if cfg.TrustDomain != old.TrustDomain || cfg.SocketPath != old.SocketPath ||
		cfg.DataDir != old.DataDir || cfg.AdminListen != old.AdminListen ||
		!reflect.DeepEqual(cfg.TPM, old.TPM) || cfg.CA != old.CA {
		a.log.Warn("reload: trust_domain, socket_path, data_dir, admin_listen, tpm and ca changes need a restart; keeping the old values")
	}
	warnLimitsReload(a.log, old, cfg)
	if a.node != nil {
		a.node.requoteNow() // a changed PCR takes effect on SIGHUP
	}
	a.unix.SetHashing(ix.Uses("unix", "sha256"))
	a.store.SetIndex(ix)
	a.inv.SetStaleAfter(time.Duration(cfg.Guardrails.StaleAfter))
	a.inv.SyncPolicy(inventoryEntries(ix.Entries()))
	a.metrics.Reloads.WithLabelValues("ok").Inc()
	a.obs.record(audit.Record{Event: "reload", Decision: "allow", Reason: fmt.Sprintf("%d entries", ix.Len())})
	a.log.Info("reloaded policy", "entries", ix.Len())
	return nil
}

// ReloadFailed records a reload that did not happen (the config did not
// load); the running policy keeps serving.
func (a *Agent) ReloadFailed(err error) {
	a.metrics.Reloads.WithLabelValues("error").Inc()
	a.obs.record(audit.Record{Event: "reload", Decision: "deny", Reason: err.Error()})
	a.log.Error("reload failed; keeping the running config", "err", err)
}

// ReopenAudit reopens a file audit sink (SIGUSR1, after log rotation). A
// refused or failed reopen is counted and the old file kept.
func (a *Agent) ReopenAudit() error {
	err := a.audit.Reopen()
	if err != nil {
		a.metrics.AuditReopen.Inc()
	}
	return err
}

// Metrics returns the agent's metrics.
func (a *Agent) Metrics() *metrics.Metrics { return a.metrics }

// Run listens on the configured socket (and admin address) and serves until
// ctx is done.
func (a *Agent) Run(ctx context.Context) error {
	l, err := peercred.Listen(a.config().SocketPath)
	if err != nil {
		return fmt.Errorf("workload API socket: %w", err)
	}
	return a.Serve(ctx, l)
}

// Serve serves the Workload API on l (for example a socket-activated
// listener) until ctx is done.
func (a *Agent) Serve(ctx context.Context, l net.Listener) error {
	var admin net.Listener
	if adminListen := a.config().AdminListen; adminListen != "" {
		var err error
		admin, err = net.Listen("tcp", adminListen)
		if err != nil {
			_ = l.Close()
			return fmt.Errorf("admin_listen: %w", err)
		}
		a.addr.Store(admin.Addr().String())
	}
	a.workers = newWorkers(2 * len(a.attestors))
	defer a.workers.stop()
	if a.ownsTPM {
		defer a.tpm.Close()
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.store.Run(ctx) })
	g.Go(func() error { a.inv.Run(ctx); return nil })
	g.Go(func() error { a.staleLoop(ctx); return nil })
	g.Go(func() error { a.suspendLoop(ctx); return nil })
	if a.ca != nil {
		g.Go(func() error { return a.ca.Run(ctx) })
	}
	if ls, ok := a.store.Source().(*identity.LocalSource); ok {
		g.Go(func() error { return ls.Run(ctx) })
	}
	if a.node != nil {
		g.Go(func() error { a.node.run(ctx, a.store.Reevaluate, a.metrics.TPMQuotes); return nil })
	}
	if a.fleet != nil {
		g.Go(func() error { return a.fleet.run(ctx) })
	}
	if a.federation != nil {
		g.Go(func() error { return a.federation.run(ctx, a) })
	}
	if a.ca != nil && !a.ca.NextRotation().IsZero() {
		g.Go(func() error { a.rotateIntermediates(ctx); return nil })
	}
	l = a.limits.listener(l, a.log, a.server.ReadDelay)
	g.Go(func() error { return a.server.Serve(ctx, l) })
	if admin != nil {
		g.Go(func() error { return a.serveAdmin(ctx, admin) })
	}
	a.serving.Store(true)
	a.ready.Do(func() { close(a.readyCh) })
	a.log.Info("nodeward agent serving",
		"socket", l.Addr().String(), "trust_domain", a.store.Source().TrustDomain().Name(),
		"entries", a.store.Stats().Entries, "admin", a.AdminAddr(),
		"startup", time.Since(a.started).Round(time.Microsecond))
	err := g.Wait()
	a.serving.Store(false)
	_ = a.audit.Close()
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
