package federation

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/nodeward/nodeward/internal/atomicfile"
	"github.com/nodeward/nodeward/internal/safefs"
)

// Fetcher defaults and bounds.
const (
	// DefaultMinRefresh and DefaultMaxRefresh bound the refresh interval a
	// foreign bundle's spiffe_refresh_hint asks for.
	DefaultMinRefresh = 10 * time.Second
	DefaultMaxRefresh = time.Hour
	// DefaultRetry is the first retry after a failed fetch; it doubles up
	// to the refresh interval.
	DefaultRetry = time.Second
	// DefaultFetchTimeout bounds one fetch (connect, TLS, response).
	DefaultFetchTimeout = 30 * time.Second
	// maxWait is the longest timer: the wall clock is re-read at least
	// this often, so a suspend does not delay a refresh much.
	maxWait = 30 * time.Second
)

// Peer is a foreign trust domain whose bundle is fetched.
type Peer struct {
	TrustDomain spiffeid.TrustDomain
	// URL is the foreign bundle endpoint (https).
	URL     string
	Profile Profile
	// EndpointID is the SPIFFE ID the endpoint must present (https_spiffe,
	// in TrustDomain).
	EndpointID spiffeid.ID
	// BundleFile is the bootstrap bundle (https_spiffe): SPIFFE bundle
	// JSON or PEM certificates.
	BundleFile string
	// CAFile is an optional PEM file of web PKI roots used instead of the
	// system's (https_web).
	CAFile string
}

// FetcherConfig configures a Fetcher.
type FetcherConfig struct {
	Peers []Peer
	// CacheDir holds the last good bundle of each peer (<td>.json); it is
	// created (0755) and checked as data_dir is (internal/safefs).
	CacheDir string
	// MinRefresh and MaxRefresh bound the honoured refresh hint (defaults
	// 10s and 1h); DefaultRefresh is used for a bundle without a hint
	// (default 5m, clamped too).
	MinRefresh, MaxRefresh, DefaultRefresh time.Duration
	// Retry is the first retry after a failure (default 1s), doubling up
	// to the refresh interval.
	Retry time.Duration
	// Timeout bounds one fetch (default 30s).
	Timeout time.Duration
	// Log receives refresh failures and changes (default: discarded).
	Log *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Status is one foreign trust domain's refresh state.
type Status struct {
	TrustDomain spiffeid.TrustDomain
	URL         string
	Profile     Profile
	// Source is where the bundle in use came from: "none" (https_web
	// before the first fetch), "bootstrap", "cache" or "endpoint".
	Source string
	// Sequence is the bundle's spiffe_sequence (HasSequence: it has one).
	Sequence    uint64
	HasSequence bool
	// LastRefresh is the last successful fetch (zero: none since start).
	LastRefresh time.Time
	// LastAttempt is the last fetch, NextRefresh the next one.
	LastAttempt, NextRefresh time.Time
	// LastError is the last failed fetch's error ("" after a success).
	LastError string
	// Attempts counts fetches since start, Failures consecutive failures.
	Attempts, Failures int
}

// Fetcher keeps the bundles of foreign trust domains current: it fetches
// each from its bundle endpoint, at the refresh hint the bundle gives, and
// caches the last good one on disk.
type Fetcher struct {
	cfg   FetcherConfig
	peers []*peer

	running atomic.Bool

	mu      sync.Mutex
	changed chan struct{}
	snap    atomic.Pointer[map[spiffeid.TrustDomain]*spiffebundle.Bundle]
}

type peer struct {
	Peer
	f      *Fetcher
	client *http.Client
	// guarded by f.mu
	current *spiffebundle.Bundle
	st      Status
}

// NewFetcher checks cfg, loads each peer's cached bundle (or, for
// https_spiffe without a cache, its bootstrap bundle) and returns a Fetcher
// whose Bundles are ready before Run. A cache file that is a symlink, not a
// regular file, or writable by others than root and the agent's user is an
// error (safefs.ErrUnsafe); one that does not parse is logged and ignored.
func NewFetcher(cfg FetcherConfig) (*Fetcher, error) {
	if cfg.MinRefresh <= 0 {
		cfg.MinRefresh = DefaultMinRefresh
	}
	if cfg.MaxRefresh <= 0 {
		cfg.MaxRefresh = DefaultMaxRefresh
	}
	if cfg.MaxRefresh < cfg.MinRefresh {
		return nil, fmt.Errorf("federation: max refresh %s below min refresh %s: %w", cfg.MaxRefresh, cfg.MinRefresh, ErrConfig)
	}
	if cfg.DefaultRefresh <= 0 {
		cfg.DefaultRefresh = DefaultRefreshHint
	}
	if cfg.Retry <= 0 {
		cfg.Retry = DefaultRetry
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultFetchTimeout
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if !filepath.IsAbs(cfg.CacheDir) {
		return nil, fmt.Errorf("federation: cache dir %q is not absolute: %w", cfg.CacheDir, ErrConfig)
	}
	f := &Fetcher{cfg: cfg, changed: make(chan struct{})}
	dir, err := safefs.OpenDir(cfg.CacheDir, true)
	if err != nil {
		return nil, fmt.Errorf("federation: cache dir: %w", err)
	}
	defer func() { _ = dir.Close() }() // a directory held for reading
	seen := map[spiffeid.TrustDomain]bool{}
	var names []string
	for _, pc := range cfg.Peers {
		if pc.TrustDomain.IsZero() || seen[pc.TrustDomain] {
			return nil, fmt.Errorf("federation: trust domain %q missing or listed twice: %w", pc.TrustDomain, ErrConfig)
		}
		seen[pc.TrustDomain] = true
		if u, err := url.Parse(pc.URL); err != nil || u.Scheme != "https" || u.Host == "" {
			return nil, fmt.Errorf("federation: %s: want an https URL, got %q: %w", pc.TrustDomain, pc.URL, ErrConfig)
		}
		names = append(names, cacheName(pc.TrustDomain))
		p := &peer{Peer: pc, f: f, st: Status{TrustDomain: pc.TrustDomain, URL: pc.URL, Profile: pc.Profile, Source: "none"}}
		if err := p.init(); err != nil {
			return nil, fmt.Errorf("federation: %s: %w", pc.TrustDomain, err)
		}
		if err := p.loadCache(dir); err != nil {
			return nil, fmt.Errorf("federation: %s: %w", pc.TrustDomain, err)
		}
		f.peers = append(f.peers, p)
	}
	if _, err := atomicfile.CleanTemps(cfg.CacheDir, names...); err != nil {
		cfg.Log.Warn("federation: leftover temporary files", "err", err)
	}
	f.mu.Lock()
	f.publishLocked()
	f.mu.Unlock()
	return f, nil
}

func cacheName(td spiffeid.TrustDomain) string { return td.Name() + ".json" }

// init builds the peer's HTTP client and, for https_spiffe, loads the
// bootstrap bundle.
func (p *peer) init() error {
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 10 * time.Second,
		// Each fetch makes a new connection, so an https_spiffe
		// endpoint is authenticated against the bundle known now.
		DisableKeepAlives:      true,
		MaxResponseHeaderBytes: 64 << 10,
	}
	switch p.Profile {
	case ProfileHTTPSSPIFFE:
		if p.EndpointID.IsZero() || p.EndpointID.TrustDomain() != p.TrustDomain {
			return fmt.Errorf("https_spiffe needs an endpoint SPIFFE ID in %s: %w", p.TrustDomain, ErrConfig)
		}
		data, err := readConfigFile(p.BundleFile)
		if err != nil {
			return fmt.Errorf("bootstrap bundle: %w", err)
		}
		b, err := parseBootstrap(p.TrustDomain, data)
		if err != nil {
			return fmt.Errorf("bootstrap bundle %s: %w", p.BundleFile, err)
		}
		p.current, p.st.Source = b, "bootstrap"
		p.setSeqLocked(b)
		// go-spiffe's verification (as federation.WithSPIFFEAuth does),
		// against the last known bundle of the trust domain.
		tr.TLSClientConfig = tlsconfig.TLSClientConfig(p, tlsconfig.AuthorizeID(p.EndpointID))
	case ProfileHTTPSWeb:
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if p.CAFile != "" {
			data, err := readConfigFile(p.CAFile)
			if err != nil {
				return fmt.Errorf("web PKI roots: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(data) {
				return fmt.Errorf("web PKI roots %s: no PEM certificate: %w", p.CAFile, ErrConfig)
			}
		}
		tr.TLSClientConfig = tc
	default:
		return fmt.Errorf("unknown profile %q: %w", p.Profile, ErrConfig)
	}
	p.client = &http.Client{Transport: tr, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if len(via) >= 3 {
			return errors.New("more than 3 redirects")
		}
		if req.URL.Scheme != "https" {
			return fmt.Errorf("redirect to a %s URL", req.URL.Scheme)
		}
		return nil
	}}
	return nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source with the last
// known bundle of the peer's trust domain.
func (p *peer) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != p.TrustDomain {
		return nil, fmt.Errorf("no bundle for trust domain %s (the endpoint belongs to %s)", td, p.TrustDomain)
	}
	p.f.mu.Lock()
	defer p.f.mu.Unlock()
	return p.current.X509Bundle(), nil
}

func (p *peer) setSeqLocked(b *spiffebundle.Bundle) {
	p.st.Sequence, p.st.HasSequence = b.SequenceNumber()
}

// Bundles returns the current foreign bundles by trust domain: an immutable
// snapshot (neither the map nor the bundles may be modified).
func (f *Fetcher) Bundles() map[spiffeid.TrustDomain]*spiffebundle.Bundle { return *f.snap.Load() }

// Changed returns a channel closed at the next change of Bundles (then call
// it again).
func (f *Fetcher) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

// Status returns each peer's refresh state, sorted by trust domain.
func (f *Fetcher) Status() []Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Status, 0, len(f.peers))
	for _, p := range f.peers {
		out = append(out, p.st)
	}
	slices.SortFunc(out, func(a, b Status) int {
		switch {
		case a.TrustDomain.Name() < b.TrustDomain.Name():
			return -1
		case a.TrustDomain.Name() > b.TrustDomain.Name():
			return 1
		}
		return 0
	})
	return out
}

// publishLocked stores a new snapshot and wakes Changed's waiters.
func (f *Fetcher) publishLocked() {
	m := make(map[spiffeid.TrustDomain]*spiffebundle.Bundle, len(f.peers))
	for _, p := range f.peers {
		if p.current != nil {
			m[p.TrustDomain] = p.current
		}
	}
	f.snap.Store(&m)
	close(f.changed)
	f.changed = make(chan struct{})
}

// Run refreshes every peer until ctx is done; the first fetch of each is at
// once. It may be called once.
func (f *Fetcher) Run(ctx context.Context) error {
	if !f.running.CompareAndSwap(false, true) {
		return errors.New("federation: fetcher already run")
	}
	var wg sync.WaitGroup
	for _, p := range f.peers {
		wg.Go(func() { p.run(ctx) })
	}
	wg.Wait()
	return nil
}

func (p *peer) run(ctx context.Context) {
	next := p.f.cfg.Now().Round(0)
	for {
		if !p.f.sleepUntil(ctx, next) {
			return
		}
		b, err := p.fetch(ctx)
		if ctx.Err() != nil {
			return
		}
		next = p.record(b, err)
	}
}

// sleepUntil waits until the wall clock reaches t (re-reading it at least
// every maxWait); false when ctx ended first.
func (f *Fetcher) sleepUntil(ctx context.Context, t time.Time) bool {
	for {
		d := t.Sub(f.cfg.Now().Round(0))
		if d <= 0 {
			return ctx.Err() == nil
		}
		timer := time.NewTimer(min(d, maxWait))
		select {
		case <-ctx.Done():
			timer.Stop()
			return false
		case <-timer.C:
		}
	}
}

// fetch GETs the peer's bundle, authenticated per its profile, and checks it.
func (p *peer) fetch(ctx context.Context) (*spiffebundle.Bundle, error) {
	ctx, cancel := context.WithTimeout(ctx, p.f.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL, http.NoBody)
	if err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	defer func() { _ = resp.Body.Close() }() // read-only
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch %s: HTTP %d", p.URL, resp.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxBundleSize+1))
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", p.URL, err)
	}
	if len(data) > MaxBundleSize {
		return nil, fmt.Errorf("fetch %s: response larger than %d bytes: %w", p.URL, MaxBundleSize, ErrBadBundle)
	}
	return parseBundle(p.TrustDomain, data)
}

// record applies a fetch's outcome and returns when to fetch next. A new
// bundle replaces the current one and is cached; a failure keeps it.
func (p *peer) record(b *spiffebundle.Bundle, ferr error) time.Time {
	f := p.f
	name := p.TrustDomain.Name()
	f.mu.Lock()
	cur := p.current
	f.mu.Unlock()
	// Only this goroutine replaces p.current, so cur stays current.
	changed := ferr == nil && (cur == nil || !cur.Equal(b))
	if changed {
		if cur != nil {
			old, oldOK := cur.SequenceNumber()
			if seq, ok := b.SequenceNumber(); ok && oldOK && seq < old {
				f.cfg.Log.Warn("federation: bundle sequence went back", "trust_domain", name, "was", old, "now", seq)
			}
		}
		// Cached before it is published: whoever sees it can rely on a
		// restart finding it.
		if err := p.writeCache(b); err != nil {
			f.cfg.Log.Error("federation: bundle not cached; a restart without the endpoint would use an older bundle",
				"trust_domain", name, "err", err)
		}
	}
	now := f.cfg.Now().Round(0)
	f.mu.Lock()
	p.st.Attempts++
	p.st.LastAttempt = now
	var wait time.Duration
	if ferr != nil {
		p.st.Failures++
		p.st.LastError = ferr.Error()
		shift := min(p.st.Failures-1, 20)
		wait = min(f.cfg.Retry<<shift, f.interval(cur))
	} else {
		if changed {
			p.current = b
			p.st.Source = "endpoint"
			p.setSeqLocked(b)
			f.publishLocked()
		}
		p.st.Failures, p.st.LastError, p.st.LastRefresh = 0, "", now
		wait = f.interval(b)
	}
	// Jitter: up to a tenth earlier, so peers do not fetch in lock-step.
	wait -= time.Duration(rand.Int64N(int64(wait)/10 + 1))
	p.st.NextRefresh = now.Add(wait)
	f.mu.Unlock()
	switch {
	case ferr != nil:
		f.cfg.Log.Warn("federation: bundle refresh failed; the last good bundle stays in use",
			"trust_domain", name, "err", ferr, "retry_in", wait.Round(time.Millisecond))
	case changed:
		seq, _ := b.SequenceNumber()
		f.cfg.Log.Info("federation: bundle updated", "trust_domain", name, "sequence", seq,
			"x509_authorities", len(b.X509Authorities()), "jwt_authorities", len(b.JWTAuthorities()))
	}
	return now.Add(wait)
}

// interval is the refresh interval bundle b asks for, within the bounds.
func (f *Fetcher) interval(b *spiffebundle.Bundle) time.Duration {
	d := f.cfg.DefaultRefresh
	if b != nil {
		if h, ok := b.RefreshHint(); ok && h > 0 {
			d = h
		}
	}
	return min(max(d, f.cfg.MinRefresh), f.cfg.MaxRefresh)
}
