// Package fleet is the identity source of fleet mode: the agent has joined
// a SPIRE server as a node agent, and the server is both the CA and the
// policy authority. It syncs the entries the server authorizes for this
// node into the store's policy, mints workload X.509-SVIDs from CSRs of
// keys made here (the server signs; the key never leaves the node) and
// JWT-SVIDs (the server signs), and publishes the server's bundle and the
// federated bundles the entries ask for.
//
// Security: the server decides which entries reach this node; the agent
// decides which local process gets which of them, with the same attestors
// and matching as in standalone mode. Entries whose selectors the agent
// cannot attest on a workload (node selectors such as x509pop:…, or types
// it has no attestor for) and store_svid entries never match a workload.
package fleet

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/url"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodeward/nodeward/agent/ca"
	"github.com/nodeward/nodeward/agent/identity"
	"github.com/nodeward/nodeward/agent/policy"
	"github.com/nodeward/nodeward/attestors/selector"
	"github.com/nodeward/nodeward/internal/jwtpeek"
)

// Entry is a registration entry as the server sends it to this node.
type Entry struct {
	ID             string
	SPIFFEID       spiffeid.ID
	Selectors      []string // "type:value" as SPIRE writes them
	FederatesWith  []string // trust domain names
	Hint           string
	RevisionNumber int64
	StoreSVID      bool
}

// Authority is one X.509 authority of a bundle.
type Authority struct {
	Cert    *x509.Certificate
	Tainted bool
}

// JWTKey is one JWT authority of a bundle.
type JWTKey struct {
	KeyID     string
	PublicKey crypto.PublicKey
	ExpiresAt time.Time
	Tainted   bool
}

// Bundle is a trust domain's bundle as the server serves it.
type Bundle struct {
	TrustDomain spiffeid.TrustDomain
	X509        []Authority
	JWT         []JWTKey
	Sequence    uint64
	RefreshHint time.Duration
}

// Client is the agent side of the server protocol this source needs
// (agent/spire implements it over gRPC, adapted in package agent).
type Client interface {
	// SyncEntries returns every entry the server authorizes for this node.
	SyncEntries(ctx context.Context) ([]Entry, error)
	// NewX509SVID has the server sign csr for the entry; it returns the
	// chain, leaf first.
	NewX509SVID(ctx context.Context, entryID string, csr []byte) ([]*x509.Certificate, error)
	// NewJWTSVID has the server mint a JWT-SVID for the entry.
	NewJWTSVID(ctx context.Context, entryID string, audience []string) (token string, expiresAt time.Time, err error)
	// Bundle returns the server's own trust domain bundle.
	Bundle(ctx context.Context) (*Bundle, error)
	// FederatedBundle returns a foreign trust domain's bundle as the
	// server holds it; an error wrapping ErrNoBundle when it has none.
	FederatedBundle(ctx context.Context, td spiffeid.TrustDomain) (*Bundle, error)
}

// ErrNoBundle: the server holds no bundle of a trust domain an entry
// federates with.
var ErrNoBundle = errors.New("the server has no bundle of this trust domain")

// WorkloadTypes are the selector types the agent attests on workloads; an
// entry with any other type can never match a workload here.
var WorkloadTypes = []string{"unix", "systemd", "container", "k8s", "cgroup"}

// Config configures a Source.
type Config struct {
	Client       Client
	TrustDomain  spiffeid.TrustDomain
	SyncInterval time.Duration
	// SetPolicy receives every new policy (the store's SetIndex).
	SetPolicy func(*policy.Index)
	Logger    *slog.Logger
	// Clock is the wall clock; nil: time.Now without a monotonic reading.
	Clock func() time.Time
	// Observer hears of every sync (metrics); nil: nobody.
	Observer Observer
	// Fatal reports a sync error after which the node must stop (the
	// server banned it): Run returns it. Nil: none is.
	Fatal func(error) bool
}

// Observer hears the outcome of every sync.
type Observer interface {
	// Synced reports a sync: err nil on success.
	Synced(err error)
}

// Source implements identity.Source against a SPIRE server.
type Source struct {
	cfg Config
	log *slog.Logger

	bundles atomic.Pointer[identity.Bundles]
	taint   atomic.Pointer[taints]

	mu        sync.Mutex
	changed   chan struct{}
	entries   map[string]int64 // entry ID -> revision of the current policy
	ownSeq    uint64
	ownRaw    []byte // fingerprint of the last own bundle
	fedRaw    map[spiffeid.TrustDomain][]byte
	fed       map[spiffeid.TrustDomain]*spiffebundle.Bundle
	lastSync  time.Time
	failSince time.Time
	lastErr   string
	policyN   int
	skipped   int
}

var (
	_ identity.Source    = (*Source)(nil)
	_ identity.Staler    = (*Source)(nil)
	_ identity.JWTStaler = (*Source)(nil)
)

// taints are the withdrawn authorities of the own bundle.
type taints struct {
	x509 [][]byte // subject key IDs
	jwt  map[string]bool
}

// New returns a Source; call Sync once (or Run) before serving.
func New(cfg Config) (*Source, error) {
	if cfg.Client == nil || cfg.SetPolicy == nil || cfg.TrustDomain.IsZero() {
		return nil, errors.New("fleet: client, trust domain and SetPolicy are required")
	}
	if cfg.SyncInterval <= 0 {
		cfg.SyncInterval = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = func() time.Time { return time.Now().Round(0) }
	}
	s := &Source{cfg: cfg, log: cfg.Logger, changed: make(chan struct{}),
		fedRaw: map[spiffeid.TrustDomain][]byte{}, fed: map[spiffeid.TrustDomain]*spiffebundle.Bundle{}}
	empty, err := identity.NewBundles(spiffebundle.New(cfg.TrustDomain))
	if err != nil {
		return nil, err
	}
	s.bundles.Store(empty)
	s.taint.Store(&taints{})
	return s, nil
}

// TrustDomain implements identity.Source.
func (s *Source) TrustDomain() spiffeid.TrustDomain { return s.cfg.TrustDomain }

// Bundles implements identity.Source.
func (s *Source) Bundles() *identity.Bundles { return s.bundles.Load() }

// BundlesChanged implements identity.Source.
func (s *Source) BundlesChanged() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// unavailable marks a server error as "retry later" for the Workload API
// (gRPC Unavailable): the server is unreachable or refused for now.
func unavailable(what string, err error) error {
	return fmt.Errorf("%w: %s: %w", identity.ErrUnavailable, what, err)
}

// MintX509SVID implements identity.Source: a P-256 key made here, a CSR
// the server signs. The answer is checked: it must name the entry's SPIFFE
// ID, certify this key and not be expired.
func (s *Source) MintX509SVID(ctx context.Context, e *policy.Entry) (*ca.X509SVID, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	u, err := url.Parse(e.SPIFFEID.String())
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		return nil, fmt.Errorf("create CSR: %w", err)
	}
	chain, err := s.cfg.Client.NewX509SVID(ctx, e.ID, csr)
	if err != nil {
		return nil, unavailable("the server did not sign the X.509-SVID", err)
	}
	if len(chain) == 0 {
		return nil, unavailable("the server did not sign the X.509-SVID", errors.New("empty chain"))
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != e.SPIFFEID.String() {
		return nil, fmt.Errorf("the server signed an X.509-SVID for %v, want %s", leaf.URIs, e.SPIFFEID)
	}
	if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		return nil, errors.New("the server's X.509-SVID does not certify the key of the CSR")
	}
	if !s.cfg.Clock().Before(leaf.NotAfter) {
		return nil, unavailable("the server signed an expired X.509-SVID", fmt.Errorf("not after %s", leaf.NotAfter))
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return &ca.X509SVID{ID: e.SPIFFEID, Certificates: chain, PrivateKey: key, KeyDER: der}, nil
}

// MintJWTSVID implements identity.Source: the server signs.
func (s *Source) MintJWTSVID(ctx context.Context, e *policy.Entry, audience []string) (*ca.JWT, error) {
	tok, exp, err := s.cfg.Client.NewJWTSVID(ctx, e.ID, audience)
	if err != nil {
		return nil, unavailable("the server did not mint the JWT-SVID", err)
	}
	return &ca.JWT{Token: tok, ExpiresAt: exp, JTI: tokenJTI(tok)}, nil
}

// tokenJTI returns the "jti" claim of a compact JWS, or "".
func tokenJTI(token string) string {
	var c struct {
		JTI string `json:"jti"`
	}
	if jwtpeek.Claims(token, &c) != nil {
		return ""
	}
	return c.JTI
}

// StaleX509 implements identity.Staler: the SVID's issuer is an authority
// the server tainted.
func (s *Source) StaleX509(chain []*x509.Certificate) bool {
	t := s.taint.Load()
	if len(t.x509) == 0 || len(chain) == 0 {
		return false
	}
	aki := chain[len(chain)-1].AuthorityKeyId
	for _, ski := range t.x509 {
		if bytes.Equal(ski, aki) {
			return true
		}
	}
	return false
}

// StaleJWTKey implements identity.JWTStaler.
func (s *Source) StaleJWTKey(kid string) bool { return s.taint.Load().jwt[kid] }

// Run syncs every SyncInterval (±10 %) until ctx is done; after a failure
// it retries with a capped, jittered exponential backoff.
func (s *Source) Run(ctx context.Context) error {
	failures := 0
	for {
		d := jitter(s.cfg.SyncInterval)
		if failures > 0 {
			d = backoff(s.cfg.SyncInterval, failures)
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		if err := s.Sync(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if s.cfg.Fatal != nil && s.cfg.Fatal(err) {
				return err
			}
			failures++
			s.log.Warn("sync with the server failed; cached SVIDs keep being served", "err", err, "failures", failures)
			continue
		}
		failures = 0
	}
}

// jitter spreads d by ±10 % so a fleet does not sync in lock-step.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.9 + 0.2*mrand.Float64()))
}

// backoff is the wait after n consecutive failures: the interval doubled
// per failure, capped at min(2 min, 24 × interval) but never below the
// interval, with full jitter over its upper half.
func backoff(interval time.Duration, n int) time.Duration {
	limit := max(interval, min(2*time.Minute, 24*interval))
	d := interval
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	return d/2 + time.Duration(mrand.Int64N(int64(d/2)+1))
}

// Sync fetches entries and bundles once and applies what changed.
func (s *Source) Sync(ctx context.Context) (err error) {
	defer func() {
		s.mu.Lock()
		if err == nil {
			s.lastSync, s.failSince, s.lastErr = s.cfg.Clock(), time.Time{}, ""
		} else {
			if s.failSince.IsZero() {
				s.failSince = s.cfg.Clock()
			}
			s.lastErr = err.Error()
		}
		s.mu.Unlock()
		if s.cfg.Observer != nil {
			s.cfg.Observer.Synced(err)
		}
	}()
	own, err := s.cfg.Client.Bundle(ctx)
	if err != nil {
		return fmt.Errorf("fetch bundle: %w", err)
	}
	if own.TrustDomain != s.cfg.TrustDomain {
		return fmt.Errorf("the server's bundle is for %s, want %s", own.TrustDomain, s.cfg.TrustDomain)
	}
	entries, err := s.cfg.Client.SyncEntries(ctx)
	if err != nil {
		return fmt.Errorf("sync entries: %w", err)
	}
	pe, feds := s.convert(entries)
	fedBundles := s.fetchFederated(ctx, feds)
	if err := s.applyBundles(own, fedBundles); err != nil {
		return err
	}
	return s.applyPolicy(pe)
}

// convert turns server entries into policy entries, leaving out those that
// can never match a workload here.
func (s *Source) convert(entries []Entry) ([]*policy.Entry, map[spiffeid.TrustDomain]bool) {
	out := make([]*policy.Entry, 0, len(entries))
	feds := map[spiffeid.TrustDomain]bool{}
	skipped := 0
next:
	for _, se := range entries {
		if se.StoreSVID {
			skipped++
			continue
		}
		if se.SPIFFEID.TrustDomain() != s.cfg.TrustDomain || se.ID == "" || len(se.Selectors) == 0 {
			skipped++
			continue
		}
		e := &policy.Entry{ID: se.ID, SPIFFEID: se.SPIFFEID, Hint: se.Hint, Revision: se.RevisionNumber,
			Pos: "server entry " + se.ID}
		for _, str := range se.Selectors {
			sel, err := selector.Parse(str)
			if err != nil || !slices.Contains(WorkloadTypes, sel.Type) {
				// A node selector (x509pop:…, spiffe_id:…) or an attestor
				// this agent does not run: never a workload match.
				skipped++
				continue next
			}
			e.Selectors = append(e.Selectors, sel)
		}
		for _, name := range se.FederatesWith {
			td, err := spiffeid.TrustDomainFromString(name)
			if err != nil || td == s.cfg.TrustDomain {
				s.log.Warn("server entry federates with an invalid trust domain; ignored", "entry", se.ID, "trust_domain", name)
				continue
			}
			e.FederatesWith = append(e.FederatesWith, td)
			feds[td] = true
		}
		out = append(out, e)
	}
	s.mu.Lock()
	s.skipped = skipped
	s.mu.Unlock()
	return out, feds
}

// fetchFederated returns the bundles of the wanted trust domains; one the
// server does not answer for keeps its last known bundle.
func (s *Source) fetchFederated(ctx context.Context, want map[spiffeid.TrustDomain]bool) map[spiffeid.TrustDomain]*spiffebundle.Bundle {
	out := make(map[spiffeid.TrustDomain]*spiffebundle.Bundle, len(want))
	s.mu.Lock()
	prev := s.fed
	s.mu.Unlock()
	for td := range want {
		b, err := s.cfg.Client.FederatedBundle(ctx, td)
		if err == nil {
			var sb *spiffebundle.Bundle
			if sb, err = toSPIFFE(b); err == nil {
				out[td] = sb
				continue
			}
		}
		if errors.Is(err, ErrNoBundle) {
			s.log.Warn("the server holds no bundle of a federated trust domain", "trust_domain", td.Name())
		} else {
			s.log.Warn("federated bundle not fetched; keeping the last one", "trust_domain", td.Name(), "err", err)
		}
		if p, ok := prev[td]; ok {
			out[td] = p
		}
	}
	return out
}

// toSPIFFE converts a server bundle (tainted authorities included: they
// are trusted until the server removes them).
func toSPIFFE(b *Bundle) (*spiffebundle.Bundle, error) {
	sb := spiffebundle.New(b.TrustDomain)
	for _, a := range b.X509 {
		sb.AddX509Authority(a.Cert)
	}
	for _, k := range b.JWT {
		if err := sb.AddJWTAuthority(k.KeyID, k.PublicKey); err != nil {
			return nil, fmt.Errorf("bundle of %s: JWT key %q: %w", b.TrustDomain, k.KeyID, err)
		}
	}
	sb.SetSequenceNumber(b.Sequence)
	sb.SetRefreshHint(b.RefreshHint)
	return sb, nil
}

// fingerprint identifies a bundle's trust material.
func fingerprint(b *spiffebundle.Bundle) []byte {
	var buf bytes.Buffer
	for _, c := range b.X509Authorities() {
		buf.Write(c.Raw)
	}
	keys := b.JWTAuthorities()
	kids := make([]string, 0, len(keys))
	for kid := range keys {
		kids = append(kids, kid)
	}
	sort.Strings(kids)
	for _, kid := range kids {
		der, _ := x509.MarshalPKIXPublicKey(keys[kid])
		buf.WriteString(kid)
		buf.Write(der)
	}
	return buf.Bytes()
}

// applyBundles publishes a new bundle view when anything changed, and the
// taint set of the own bundle.
func (s *Source) applyBundles(own *Bundle, feds map[spiffeid.TrustDomain]*spiffebundle.Bundle) error {
	ownSB, err := toSPIFFE(own)
	if err != nil {
		return err
	}
	if len(ownSB.X509Authorities()) == 0 {
		return errors.New("the server's bundle has no X.509 authority")
	}
	t := &taints{jwt: map[string]bool{}}
	for _, a := range own.X509 {
		if a.Tainted {
			t.x509 = append(t.x509, a.Cert.SubjectKeyId)
		}
	}
	for _, k := range own.JWT {
		if k.Tainted {
			t.jwt[k.KeyID] = true
		}
	}
	ownFP := fingerprint(ownSB)
	for _, ski := range t.x509 {
		ownFP = append(append(ownFP, "tainted x509:"...), ski...)
	}
	tk := make([]string, 0, len(t.jwt))
	for kid := range t.jwt {
		tk = append(tk, kid)
	}
	sort.Strings(tk)
	for _, kid := range tk {
		ownFP = append(ownFP, "tainted jwt:"+kid...)
	}
	fedFP := make(map[spiffeid.TrustDomain][]byte, len(feds))
	for td, b := range feds {
		fedFP[td] = fingerprint(b)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	same := bytes.Equal(ownFP, s.ownRaw) && len(fedFP) == len(s.fedRaw)
	for td, fp := range fedFP {
		same = same && bytes.Equal(fp, s.fedRaw[td])
	}
	if same {
		return nil
	}
	fedList := make([]*spiffebundle.Bundle, 0, len(feds))
	for _, b := range feds {
		fedList = append(fedList, b)
	}
	bs, err := identity.NewBundles(ownSB, fedList...)
	if err != nil {
		return err
	}
	s.ownRaw, s.fedRaw, s.fed, s.ownSeq = ownFP, fedFP, feds, own.Sequence
	s.taint.Store(t)
	s.bundles.Store(bs)
	close(s.changed)
	s.changed = make(chan struct{})
	s.log.Info("trust bundles updated", "sequence", own.Sequence, "x509_authorities", len(own.X509),
		"jwt_authorities", len(own.JWT), "federated", len(feds))
	return nil
}

// applyPolicy hands the store a new policy when an entry came, went or
// changed revision.
func (s *Source) applyPolicy(entries []*policy.Entry) error {
	revs := make(map[string]int64, len(entries))
	for _, e := range entries {
		revs[e.ID] = e.Revision
	}
	s.mu.Lock()
	same := s.entries != nil && len(revs) == len(s.entries)
	for id, r := range revs {
		if old, ok := s.entries[id]; !ok || old != r {
			same = false
			break
		}
	}
	s.mu.Unlock()
	if same {
		return nil
	}
	ix, err := policy.NewIndex(entries)
	if err != nil {
		return fmt.Errorf("server entries: %w", err)
	}
	s.cfg.SetPolicy(ix)
	s.mu.Lock()
	s.entries, s.policyN = revs, len(entries)
	s.mu.Unlock()
	s.log.Info("entries synced from the server", "entries", len(entries))
	return nil
}

// Status is the sync state for `nodeward status` and metrics.
type Status struct {
	// LastSync is the last successful sync (zero: none yet).
	LastSync time.Time
	// UnreachableSince is when syncs started failing (zero: they work).
	UnreachableSince time.Time
	// LastError is the last sync error ("" after a success).
	LastError string
	// Entries is the number of entries in the policy; Skipped those the
	// server sent that can never match a workload here.
	Entries, Skipped int
	// BundleSequence is the own bundle's sequence number.
	BundleSequence uint64
}

// Status returns the sync state.
func (s *Source) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Status{LastSync: s.lastSync, UnreachableSince: s.failSince, LastError: s.lastErr,
		Entries: s.policyN, Skipped: s.skipped, BundleSequence: s.ownSeq}
}
