// Package identity is the agent's identity core: it holds the current policy
// index, mints SVIDs through a Source (the local CA, or a SPIRE server) on
// demand and outside its lock, caches them, rotates X.509-SVIDs
// at a jittered point past half their lifetime, caches JWT-SVIDs per
// (SPIFFE ID, audience set), and notifies watchers (open Workload API streams)
// whenever anything they may have been sent changes.
//
// Security: the store never decides who a caller is; it is handed selectors
// that the attestors produced and matches them against the policy. It never
// logs key material or tokens.
package identity

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"golang.org/x/sync/singleflight"

	"github.com/nodeward/nodeward/agent/ca"
	"github.com/nodeward/nodeward/agent/policy"
	"github.com/nodeward/nodeward/attestors/selector"
	"github.com/nodeward/nodeward/internal/jwtpeek"
)

// minRotateAfter keeps a nearly expired issuer from making rotation spin.
const minRotateAfter = 100 * time.Millisecond

// maxSleep bounds how long the rotation loop sleeps between wall-clock
// checks.
const maxSleep = 30 * time.Second

// ErrNoIdentity is returned when a caller's selectors match no entry.
var ErrNoIdentity = errors.New("no registration entry matches the caller")

// ErrUnavailable is returned when no valid SVID can be issued now: the CA's
// issuer (a TPM-signed intermediate) expired or is about to, and a cached
// SVID is past its usable life. Callers should retry.
var ErrUnavailable = errors.New("no valid SVID can be issued now")

// ErrNotEntitled is returned when a caller asks for a SPIFFE ID it is not entitled to.
var ErrNotEntitled = errors.New("caller is not entitled to the requested SPIFFE ID")

// Config configures a Store.
type Config struct {
	// Source mints SVIDs and publishes bundles. CA is a shorthand for
	// NewLocalSource(CA); exactly one of them is set.
	Source Source
	CA     *ca.CA
	Index  *policy.Index // nil means deny-all
	Logger *slog.Logger
	// Clock returns the current time; nil means time.Now.
	Clock func() time.Time
	// JWTCacheSize bounds the JWT-SVID cache; default 10,000.
	JWTCacheSize int
	// JWTCacheBytes bounds the bytes held by each JWT-SVID cache (minted
	// and validated tokens); default DefaultJWTCacheBytes.
	JWTCacheBytes int64
	// Observer hears of mints, rotations and revocations; nil: nobody.
	Observer Observer
}

// Observer hears what the store does, for metrics and the audit trail.
// Calls are made after the store's lock is released, from the goroutine that
// made the change; they must be quick.
type Observer interface {
	// X509Minted: an X.509-SVID was minted for e (rotation: it replaced one).
	X509Minted(e *policy.Entry, sv *X509SVID, rotation bool)
	// X509RotationFailed: re-minting failed; the old SVID keeps serving.
	X509RotationFailed(e *policy.Entry, err error)
	// JWTMinted: a JWT-SVID was minted (not served from the cache).
	JWTMinted(e *policy.Entry, j *JWTSVID)
	// Revoked: an entry left the policy (reason "removed") or passed its
	// expiry ("expired"); its SVIDs are dropped.
	Revoked(e *policy.Entry, reason string)
}

type nopObserver struct{}

func (nopObserver) X509Minted(*policy.Entry, *X509SVID, bool) {}
func (nopObserver) X509RotationFailed(*policy.Entry, error)   {}
func (nopObserver) JWTMinted(*policy.Entry, *JWTSVID)         {}
func (nopObserver) Revoked(*policy.Entry, string)             {}

// X509SVID is a minted X.509-SVID held by the store, with the entry it was
// minted for. Values are immutable; rotation replaces the pointer.
type X509SVID struct {
	Entry    *policy.Entry
	SVID     *ca.X509SVID
	ChainDER []byte // concatenated DER of the chain, leaf first
	Serial   string // hex serial of the leaf
	// RotateAt is the jittered moment after which the SVID is re-minted.
	RotateAt time.Time
}

// JWTSVID is a JWT-SVID for one SPIFFE ID and audience set.
type JWTSVID struct {
	ID        spiffeid.ID
	KeyID     string // the signing key's id (kid)
	EntryID   string
	Hint      string
	Token     string
	JTI       string
	ExpiresAt time.Time
	refreshAt time.Time
}

type jwtKey struct {
	id  string
	aud string // sorted audiences joined by \x00
}

// Store is the identity core. It is safe for concurrent use.
type Store struct {
	src   Source
	log   *slog.Logger
	clock func() time.Time
	obs   Observer

	// flight makes concurrent requests for one SVID share one mint.
	flight singleflight.Group

	mu      sync.RWMutex
	index   *policy.Index
	byID    map[string]*policy.Entry // the index's entries by ID
	x509    map[string]*X509SVID     // by entry ID
	changed chan struct{}            // closed and replaced on every change
	version uint64
	wake    chan struct{}   // nudges the rotation loop
	expired map[string]bool // entry IDs whose expiry was already handled
	events  []func()        // observer calls queued under mu, run by unlock

	jwt       *sizedCache[jwtKey, *JWTSVID]
	validated *sizedCache[[32]byte, *validatedSVID]
}

// New returns a Store.
func New(cfg Config) (*Store, error) {
	switch {
	case cfg.Source == nil && cfg.CA == nil:
		return nil, errors.New("identity: a source (or CA) is required")
	case cfg.Source != nil && cfg.CA != nil:
		return nil, errors.New("identity: set a source or a CA, not both")
	case cfg.CA != nil:
		src, err := NewLocalSource(cfg.CA)
		if err != nil {
			return nil, err
		}
		cfg.Source = src
	}
	if cfg.Index == nil {
		cfg.Index = policy.Empty
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = wallNow
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	if cfg.JWTCacheSize <= 0 {
		cfg.JWTCacheSize = 10000
	}
	if cfg.JWTCacheBytes <= 0 {
		cfg.JWTCacheBytes = DefaultJWTCacheBytes
	}
	jc := newSizedCache(cfg.JWTCacheSize, cfg.JWTCacheBytes, jwtSize)
	vc := newSizedCache(1024, cfg.JWTCacheBytes, validatedSize)
	return &Store{
		validated: vc,
		src:       cfg.Source,
		log:       cfg.Logger,
		obs:       cfg.Observer,
		clock:     cfg.Clock,
		index:     cfg.Index,
		byID:      entriesByID(cfg.Index),
		x509:      make(map[string]*X509SVID),
		changed:   make(chan struct{}),
		wake:      make(chan struct{}, 1),
		expired:   make(map[string]bool),
		jwt:       jc,
	}, nil
}

// wallNow is the wall-clock time without its monotonic reading: expiry
// decisions compare against certificate and token times, which are
// wall-clock, and the monotonic clock stops while the machine is suspended.
func wallNow() time.Time { return time.Now().Round(0) }

// later queues an observer call until the write lock is released. s.mu must
// be held for writing.
func (s *Store) later(f func()) { s.events = append(s.events, f) }

// unlock releases the write lock, then makes the observer calls queued
// under it (the observer writes the audit file; it must not hold up
// every reader of the store).
func (s *Store) unlock() {
	ev := s.events
	s.events = nil
	s.mu.Unlock()
	for _, f := range ev {
		f()
	}
}

// usable reports whether a cached SVID may still be served at now: it has
// not expired, and it is not yet due for rotation (a quarter of its life
// or more is left) or keeps at least ca.MinLeafLife (or half its TTL, when
// that is shorter).
func usable(sv *X509SVID, now time.Time) bool {
	left := sv.SVID.Certificates[0].NotAfter.Sub(now)
	return left > 0 && (now.Before(sv.RotateAt) || left >= min(ca.MinLeafLife, sv.Entry.X509TTL/2))
}

// Wake makes the rotation loop look at every SVID now (the CA's issuer was
// renewed: SVIDs that could not be minted can be now).
func (s *Store) Wake() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Source returns the source the store mints with.
func (s *Store) Source() Source { return s.src }

// Bundles returns the source's current bundles.
func (s *Store) Bundles() *Bundles { return s.src.Bundles() }

func entriesByID(ix *policy.Index) map[string]*policy.Entry {
	m := make(map[string]*policy.Entry, ix.Len())
	for _, e := range ix.Entries() {
		m[e.ID] = e
	}
	return m
}

// Index returns the current policy index.
func (s *Store) Index() *policy.Index {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.index
}

// Changed returns a channel that is closed at the next change of policy or of
// any SVID, and the version it belongs to. Watchers re-read their state and
// call Changed again.
func (s *Store) Changed() (<-chan struct{}, uint64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.changed, s.version
}

// Reevaluate wakes every watcher so it matches its workload again: facts
// outside the policy changed (the node's TPM quote), so who gets which
// identity may have changed although no entry did.
func (s *Store) Reevaluate() {
	s.mu.Lock()
	s.notifyLocked()
	s.mu.Unlock()
}

// notifyLocked wakes every watcher. s.mu must be held for writing.
func (s *Store) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
	s.version++
}

// SetIndex atomically replaces the policy. SVIDs of entries that are gone or
// changed are dropped at once, JWT-SVIDs of SPIFFE IDs that no entry grants
// any more are dropped, and watchers are notified.
func (s *Store) SetIndex(ix *policy.Index) {
	if ix == nil {
		ix = policy.Empty
	}
	keep := make(map[string]*policy.Entry, ix.Len())
	ids := make(map[string]bool, ix.Len())
	for _, e := range ix.Entries() {
		keep[e.ID] = e
		ids[e.SPIFFEID.String()] = true
	}
	s.mu.Lock()
	for _, e := range s.index.Entries() {
		if _, ok := keep[e.ID]; !ok {
			s.later(func() { s.obs.Revoked(e, "removed") })
		}
	}
	s.index = ix
	s.byID = keep
	for id, sv := range s.x509 {
		if e, ok := keep[id]; !ok || !sameEntry(e, sv.Entry) {
			delete(s.x509, id)
		}
	}
	clear(s.expired)
	s.notifyLocked()
	s.unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	for _, k := range s.jwt.Keys() {
		if !ids[k.id] {
			s.jwt.Remove(k)
		}
	}
}

// sameEntry reports whether an SVID minted for old is still right for e.
func sameEntry(e, old *policy.Entry) bool {
	return e.SPIFFEID == old.SPIFFEID && e.X509TTL == old.X509TTL &&
		strings.Join(e.DNSNames, ",") == strings.Join(old.DNSNames, ",") &&
		e.Revision == old.Revision
}

// currentLocked reports whether e is still in the policy, unchanged for
// its SVIDs. s.mu must be held.
func (s *Store) currentLocked(e *policy.Entry) bool {
	cur, ok := s.byID[e.ID]
	return ok && (cur == e || sameEntry(cur, e))
}

// Match returns the entries the selectors grant, or ErrNoIdentity.
func (s *Store) Match(sels []selector.Selector) ([]*policy.Entry, error) {
	entries := s.Index().Match(sels)
	now := s.clock()
	live := entries[:0:0]
	for _, e := range entries {
		if !e.Expired(now) {
			live = append(live, e)
		}
	}
	if len(live) == 0 {
		return nil, ErrNoIdentity
	}
	return live, nil
}

// X509SVIDs returns the X.509-SVIDs for the given entries, minting those not
// yet cached or past their usable life (checked against the wall clock on
// every call). Entries sharing a SPIFFE ID yield one SVID each (distinct
// hints are the caller's business). When a needed SVID cannot be minted
// because the source cannot sign now (the CA's issuer expired, the server
// is unreachable), it returns ErrUnavailable: an expired SVID is never
// returned. Minting runs outside the store's lock; concurrent callers
// needing the same SVID share one mint.
func (s *Store) X509SVIDs(entries []*policy.Entry) ([]*X509SVID, error) {
	out := make([]*X509SVID, 0, len(entries))
	var missing []int
	now := s.clock()
	s.mu.RLock()
	for i, e := range entries {
		if sv, ok := s.x509[e.ID]; ok && usable(sv, now) && !s.stale(sv) {
			out = append(out, sv)
		} else {
			out = append(out, nil)
			missing = append(missing, i)
		}
	}
	s.mu.RUnlock()
	for _, i := range missing {
		s.mu.RLock()
		seen := s.x509[entries[i].ID]
		s.mu.RUnlock()
		sv, err := s.mintX509(entries[i], seen)
		if err != nil {
			return nil, err
		}
		out[i] = sv
	}
	if len(missing) > 0 {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
	return out, nil
}

// stale reports whether the source withdrew the authority that signed sv.
func (s *Store) stale(sv *X509SVID) bool {
	st, ok := s.src.(Staler)
	return ok && st.StaleX509(sv.SVID.Certificates)
}

// mintX509 replaces seen (the cached SVID the caller found wanting, or
// nil) for e: it returns the cached SVID when another caller replaced seen
// meanwhile, else a fresh one from the source, stored when e is still in
// the policy. A failed mint drops a cached SVID that is no longer usable
// (it is never served again) and keeps one that still is.
func (s *Store) mintX509(e *policy.Entry, seen *X509SVID) (*X509SVID, error) {
	v, err, _ := s.flight.Do("x509\x00"+e.ID, func() (any, error) {
		s.mu.RLock()
		old, had := s.x509[e.ID]
		s.mu.RUnlock()
		if had && old != seen && usable(old, s.clock()) && !s.stale(old) {
			return old, nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), mintTimeout)
		defer cancel()
		sv, err := s.newX509(ctx, e)
		s.mu.Lock()
		defer s.unlock()
		if err != nil {
			if cur, ok := s.x509[e.ID]; ok && cur == old && !usable(cur, s.clock()) {
				delete(s.x509, e.ID) // expired: never serve it again
				s.notifyLocked()
			}
			return nil, err
		}
		if s.currentLocked(e) {
			s.x509[e.ID] = sv
			s.later(func() { s.obs.X509Minted(e, sv, had) })
			if had {
				s.notifyLocked()
			}
		}
		return sv, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*X509SVID), nil
}

// newX509 mints an SVID for e through the source; no lock is held.
func (s *Store) newX509(ctx context.Context, e *policy.Entry) (*X509SVID, error) {
	svid, err := s.src.MintX509SVID(ctx, e)
	if err != nil {
		err = fmt.Errorf("mint X.509-SVID for entry %s: %w", e.ID, err)
		if errors.Is(err, ca.ErrIssuerExpiring) || errors.Is(err, ErrUnavailable) {
			return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return nil, err
	}
	if len(svid.Certificates) == 0 || svid.Certificates[0] == nil {
		return nil, fmt.Errorf("mint X.509-SVID for entry %s: the source returned no certificate", e.ID)
	}
	var chain []byte
	for _, c := range svid.Certificates {
		chain = append(chain, c.Raw...)
	}
	leaf := svid.Certificates[0]
	// Rotate at a jittered point in [50%, 75%) of the lifetime so a fleet of
	// workloads never rotates in lock-step. The lifetime counts from now, not
	// from NotBefore, which the CA backdates for clock skew.
	issued := s.clock()
	if !issued.Before(leaf.NotAfter) {
		return nil, fmt.Errorf("%w: the source returned an expired X.509-SVID for entry %s", ErrUnavailable, e.ID)
	}
	life := leaf.NotAfter.Sub(issued)
	frac := 0.5 + 0.25*rand.Float64()
	sv := &X509SVID{
		Entry:    e,
		SVID:     svid,
		ChainDER: chain,
		RotateAt: issued.Add(max(time.Duration(float64(life)*frac), minRotateAfter)),
		Serial:   leaf.SerialNumber.Text(16),
	}
	s.log.Debug("minted X.509-SVID", "spiffe_id", e.SPIFFEID.String(), "entry", e.ID,
		"serial", sv.Serial, "expires", leaf.NotAfter, "rotate_at", sv.RotateAt)
	return sv, nil
}

// Run rotates X.509-SVIDs until ctx is done: each cached SVID is re-minted at
// its RotateAt moment (or at once when its signer was withdrawn) and
// watchers are notified, also of every change of the source's bundles.
func (s *Store) Run(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := s.rotateDue()
		if exp := s.expireDue(); !exp.IsZero() && (next.IsZero() || exp.Before(next)) {
			next = exp
		}
		// Timers run on the monotonic clock, which stops while the
		// machine is suspended: wake at least every maxSleep to compare
		// against the wall clock, so a resume or a clock step is noticed.
		d := maxSleep
		if !next.IsZero() {
			d = min(max(next.Sub(s.clock()), 0), maxSleep)
		}
		timer.Reset(d)
		select {
		case <-ctx.Done():
			return nil
		case <-s.src.BundlesChanged():
			// New bundles (a rotated or federated root, a tainted key):
			// every stream sends them, and SVIDs the source withdrew are
			// re-minted at the next pass.
			s.Reevaluate()
			s.dropStaleJWTs()
		case <-s.wake:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		case <-timer.C:
		}
	}
}

// rotateDue re-mints every SVID whose rotation time has come (or whose
// signing authority the source withdrew) and returns the earliest future
// rotation time (zero when nothing is cached). It mints outside the lock.
func (s *Store) rotateDue() time.Time {
	now := s.clock()
	var next time.Time
	soonest := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	var due []*X509SVID
	s.mu.RLock()
	for _, sv := range s.x509 {
		if !now.Before(sv.RotateAt) || s.stale(sv) {
			due = append(due, sv)
			continue
		}
		soonest(sv.RotateAt)
	}
	s.mu.RUnlock()
	rotated := 0
	for _, old := range due {
		sv, err := s.mintX509(old.Entry, old)
		if err != nil {
			e := old.Entry
			s.obs.X509RotationFailed(e, err)
			// Keep serving the old SVID while it is usable (mintX509
			// dropped it otherwise); retry soon (Wake retries at once when
			// the issuer is renewed).
			s.log.Error("rotation failed", "entry", e.ID, "spiffe_id", e.SPIFFEID.String(), "err", err)
			soonest(now.Add(5 * time.Second))
			continue
		}
		rotated++
		soonest(sv.RotateAt)
	}
	if rotated > 0 {
		s.log.Info("rotated X.509-SVIDs", "count", rotated)
	}
	return next
}

// expireDue handles entries that passed their expiry since the last call:
// their SVIDs are dropped, the observer hears of it and watchers are
// notified (Match already refuses expired entries). It returns the next
// expiry to come (zero when none).
func (s *Store) expireDue() time.Time {
	now := s.clock()
	s.mu.Lock()
	defer s.unlock()
	var next time.Time
	changed := false
	for _, e := range s.index.Entries() {
		if e.ExpiresAt.IsZero() || s.expired[e.ID] {
			continue
		}
		if e.Expired(now) {
			s.expired[e.ID] = true
			delete(s.x509, e.ID)
			s.later(func() { s.obs.Revoked(e, "expired") })
			s.log.Warn("entry expired: no longer issuing", "entry", e.ID, "spiffe_id", e.SPIFFEID.String(), "expired_at", e.ExpiresAt)
			changed = true
			continue
		}
		if next.IsZero() || e.ExpiresAt.Before(next) {
			next = e.ExpiresAt
		}
	}
	if changed {
		s.notifyLocked()
	}
	return next
}

// JWTSVIDs returns JWT-SVIDs for the audience, one per distinct SPIFFE ID of
// entries (in entry order). If id is non-zero only that ID is returned, or
// ErrNotEntitled when no entry grants it.
func (s *Store) JWTSVIDs(entries []*policy.Entry, id spiffeid.ID, audience []string) ([]*JWTSVID, error) {
	aud := append([]string(nil), audience...)
	sort.Strings(aud)
	audKey := strings.Join(aud, "\x00")
	seen := make(map[spiffeid.ID]bool, len(entries))
	var out []*JWTSVID
	for _, e := range entries {
		if seen[e.SPIFFEID] || (!id.IsZero() && e.SPIFFEID != id) {
			continue
		}
		seen[e.SPIFFEID] = true
		j, err := s.jwtFor(e, audience, audKey)
		if err != nil {
			return nil, err
		}
		out = append(out, j)
	}
	if len(out) == 0 {
		if !id.IsZero() {
			return nil, ErrNotEntitled
		}
		return nil, ErrNoIdentity
	}
	return out, nil
}

func (s *Store) jwtFor(e *policy.Entry, audience []string, audKey string) (*JWTSVID, error) {
	k := jwtKey{id: e.SPIFFEID.String(), aud: audKey}
	if j, ok := s.cachedJWT(k, e); ok {
		return j, nil
	}
	v, err, _ := s.flight.Do("jwt\x00"+k.id+"\x00"+k.aud, func() (any, error) {
		if j, ok := s.cachedJWT(k, e); ok {
			return j, nil // another caller's mint finished meanwhile
		}
		ctx, cancel := context.WithTimeout(context.Background(), mintTimeout)
		defer cancel()
		minted, err := s.src.MintJWTSVID(ctx, e, audience)
		if err != nil {
			return nil, fmt.Errorf("mint JWT-SVID for entry %s: %w", e.ID, err)
		}
		now := s.clock()
		if !now.Before(minted.ExpiresAt) {
			return nil, fmt.Errorf("%w: the source returned an expired JWT-SVID for entry %s", ErrUnavailable, e.ID)
		}
		// Re-mint once half the lifetime is gone, so a returned token
		// always has at least half its lifetime left.
		j := &JWTSVID{ID: e.SPIFFEID, KeyID: tokenKeyID(minted.Token), EntryID: e.ID, Hint: e.Hint, Token: minted.Token, JTI: minted.JTI,
			ExpiresAt: minted.ExpiresAt, refreshAt: now.Add(minted.ExpiresAt.Sub(now) / 2)}
		s.obs.JWTMinted(e, j)
		s.jwt.Add(k, j)
		return j, nil
	})
	if err != nil {
		return nil, err
	}
	j := v.(*JWTSVID)
	if j.Hint != e.Hint || j.EntryID != e.ID {
		cp := *j
		cp.Hint, cp.EntryID = e.Hint, e.ID
		j = &cp
	}
	return j, nil
}

// cachedJWT returns the cached JWT-SVID of k while it is fresh, with e's
// hint and entry ID.
func (s *Store) cachedJWT(k jwtKey, e *policy.Entry) (*JWTSVID, bool) {
	j, ok := s.jwt.Get(k)
	if !ok || !s.clock().Before(j.refreshAt) {
		return nil, false
	}
	if j.Hint == e.Hint && j.EntryID == e.ID {
		return j, true
	}
	cp := *j
	cp.Hint, cp.EntryID = e.Hint, e.ID
	return &cp, true
}

// ValidateJWTSVID validates token (signature, expiry, audience) against the
// bundle of the token's trust domain. A token whose signature was verified
// before is found in a cache keyed by the SHA-256 of the whole token, so a
// service validating the same bearer token on every request pays for the
// signature check once; expiry and audience are checked on every call.
func (s *Store) ValidateJWTSVID(token, audience string) (*jwtsvid.SVID, error) {
	key := sha256.Sum256([]byte(token))
	if v, ok := s.validated.Get(key); ok {
		svid := v.svid
		if !s.clock().Before(svid.Expiry) {
			s.validated.Remove(key)
			return nil, errors.New("validate JWT-SVID: token has expired")
		}
		if !slices.Contains(svid.Audience, audience) {
			return nil, fmt.Errorf("validate JWT-SVID: expected audience in %q (audience=%q)", audience, svid.Audience)
		}
		return svid, nil
	}
	svid, err := jwtsvid.ParseAndValidate(token, s.src.Bundles().Set, []string{audience})
	if err != nil {
		return nil, fmt.Errorf("validate JWT-SVID: %w", err)
	}
	s.validated.Add(key, &validatedSVID{svid: svid, size: len(token)})
	return svid, nil
}

// JWTStaler is implemented by a source whose JWT keys can be withdrawn
// before they expire: cached JWT-SVIDs signed with such a key are dropped.
type JWTStaler interface {
	// StaleJWTKey reports whether JWT-SVIDs signed with key id kid must
	// not be handed out again.
	StaleJWTKey(kid string) bool
}

// dropStaleJWTs removes cached JWT-SVIDs whose signing key the source
// withdrew, and validation results whose key is no longer in the bundles.
func (s *Store) dropStaleJWTs() {
	// A cached validation skips the signature check: after any bundle
	// change, each token is checked against the new bundles once more.
	s.validated.RemoveIf(func([32]byte, *validatedSVID) bool { return true })
	if st, ok := s.src.(JWTStaler); ok {
		s.jwt.RemoveIf(func(_ jwtKey, j *JWTSVID) bool { return st.StaleJWTKey(j.KeyID) })
	}
}

// tokenKeyID returns the "kid" of a compact JWS's header ("" when it has
// none or cannot be read).
func tokenKeyID(token string) string {
	var hdr struct {
		KID string `json:"kid"`
	}
	if jwtpeek.Header(token, &hdr) != nil {
		return ""
	}
	return hdr.KID
}

// X509Snapshot returns the X.509-SVIDs held now.
func (s *Store) X509Snapshot() []*X509SVID {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*X509SVID, 0, len(s.x509))
	for _, sv := range s.x509 {
		out = append(out, sv)
	}
	return out
}

// Stats is a snapshot for status and readiness.
type Stats struct {
	Entries   int
	X509SVIDs int
	JWTSVIDs  int
	Version   uint64
}

// Stats returns counts of what the store holds.
func (s *Store) Stats() Stats {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return Stats{Entries: s.index.Len(), X509SVIDs: len(s.x509), JWTSVIDs: s.jwt.Len(), Version: s.version}
}
