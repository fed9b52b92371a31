package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nodeward/nodeward/agent/ca"
	"github.com/nodeward/nodeward/agent/policy"
)

// wallClock is an injectable wall clock, shared by the CA and the store.
type wallClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *wallClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *wallClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func clockStore(t *testing.T, clk *wallClock, caCfg ca.Config, obs Observer, entries ...*policy.Entry) *Store {
	t.Helper()
	caCfg.TrustDomain, caCfg.Dir, caCfg.Clock = td, t.TempDir()+"/ca", clk.Now
	c, err := ca.LoadOrCreate(caCfg)
	if err != nil {
		t.Fatal(err)
	}
	ix, err := policy.NewIndex(entries)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{CA: c, Index: ix, Clock: clk.Now, Observer: obs})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A wall-clock jump (a resume from suspend, a VM unpause, a clock step) past
// a cached SVID's expiry must never serve that SVID: the store checks the
// wall clock on every call, whatever the rotation timer did.
func TestCachedSVIDsAreCheckedAgainstTheWallClock(t *testing.T) {
	clk := &wallClock{now: time.Now().Round(0)}
	e := entry("/a", "unix:uid:1", time.Minute)
	s := clockStore(t, clk, ca.Config{}, nil, e)
	first, err := s.X509SVIDs([]*policy.Entry{e})
	if err != nil {
		t.Fatal(err)
	}
	jwt1, err := s.JWTSVIDs([]*policy.Entry{e}, first[0].Entry.SPIFFEID, []string{"aud"})
	if err != nil {
		t.Fatal(err)
	}
	clk.Add(2 * time.Hour) // "suspended" for two hours; no timer ran
	got, err := s.X509SVIDs([]*policy.Entry{e})
	if err != nil {
		t.Fatal(err)
	}
	if got[0].Serial == first[0].Serial {
		t.Fatal("served the cached X.509-SVID past its expiry")
	}
	if na := got[0].SVID.Certificates[0].NotAfter; !na.After(clk.Now().Add(30 * time.Second)) {
		t.Fatalf("new SVID expires %v, now %v", na, clk.Now())
	}
	jwt2, err := s.JWTSVIDs([]*policy.Entry{e}, first[0].Entry.SPIFFEID, []string{"aud"})
	if err != nil {
		t.Fatal(err)
	}
	if jwt2[0].Token == jwt1[0].Token || !jwt2[0].ExpiresAt.After(clk.Now()) {
		t.Fatalf("served a JWT-SVID past its expiry: expires %v, now %v", jwt2[0].ExpiresAt, clk.Now())
	}
}

// An SVID near its end (less than ca.MinLeafLife left) is re-minted too.
func TestNearlyExpiredSVIDIsReminted(t *testing.T) {
	clk := &wallClock{now: time.Now().Round(0)}
	e := entry("/a", "unix:uid:1", time.Minute)
	s := clockStore(t, clk, ca.Config{}, nil, e)
	first, err := s.X509SVIDs([]*policy.Entry{e})
	if err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Minute - ca.MinLeafLife/2)
	got, err := s.X509SVIDs([]*policy.Entry{e})
	if err != nil {
		t.Fatal(err)
	}
	if got[0].Serial == first[0].Serial {
		t.Fatal("served an SVID with less than MinLeafLife left")
	}
}

// A TPM-held root whose intermediate could not be renewed (the TPM hung
// past its life): the store refuses with ErrUnavailable instead of
// minting leaves clamped to the expired intermediate, drops the stale
// SVID, and issues again once the intermediate is renewed.
func TestExpiredIntermediateGivesErrUnavailable(t *testing.T) {
	root, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	clk := &wallClock{now: time.Now().Round(0)}
	e := entry("/a", "unix:uid:1", time.Hour)
	s := clockStore(t, clk, ca.Config{RootSigner: root, IntermediateTTL: time.Minute}, nil, e)
	if _, err := s.X509SVIDs([]*policy.Entry{e}); err != nil {
		t.Fatal(err)
	}
	if !s.Source().(*LocalSource).CA().CanIssue() {
		t.Fatal("CanIssue false with a fresh intermediate")
	}
	clk.Add(time.Minute - ca.MinLeafLife/2) // intermediate nearly gone, not renewed
	if s.Source().(*LocalSource).CA().CanIssue() {
		t.Fatal("CanIssue true with an intermediate about to expire")
	}
	for range 3 {
		got, err := s.X509SVIDs([]*policy.Entry{e})
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("X509SVIDs = %v, %v; want ErrUnavailable", got, err)
		}
	}
	if n := len(s.X509Snapshot()); n != 0 {
		t.Fatalf("the unusable SVID is still held (%d)", n)
	}
	if next := s.rotateDue(); !next.IsZero() {
		t.Fatalf("rotation scheduled at %v with nothing cached", next)
	}
	if err := s.Source().(*LocalSource).CA().RotateIntermediate(); err != nil {
		t.Fatal(err)
	}
	got, err := s.X509SVIDs([]*policy.Entry{e})
	if err != nil {
		t.Fatal(err)
	}
	if na := got[0].SVID.Certificates[0].NotAfter; na.Sub(clk.Now()) < ca.MinLeafLife {
		t.Fatalf("SVID after renewal expires %v (now %v)", na, clk.Now())
	}
}

// A rotation that fails because the intermediate expired must not leave an
// expired SVID in the cache, nor schedule a retry in a tight loop.
func TestRotationWithExpiredIntermediateDropsSVID(t *testing.T) {
	root, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	clk := &wallClock{now: time.Now().Round(0)}
	e := entry("/a", "unix:uid:1", time.Hour)
	s := clockStore(t, clk, ca.Config{RootSigner: root, IntermediateTTL: time.Minute}, nil, e)
	if _, err := s.X509SVIDs([]*policy.Entry{e}); err != nil {
		t.Fatal(err)
	}
	ch, _ := s.Changed()
	clk.Add(2 * time.Minute)
	next := s.rotateDue()
	if n := len(s.X509Snapshot()); n != 0 {
		t.Fatalf("expired SVID kept after a failed rotation (%d)", n)
	}
	if !next.IsZero() && next.Sub(clk.Now()) < time.Second {
		t.Fatalf("retry scheduled in %v: a tight loop", next.Sub(clk.Now()))
	}
	select {
	case <-ch:
	default:
		t.Fatal("watchers not told that the SVID was dropped")
	}
}

// reentrantObserver calls back into the store: it deadlocks if the store
// calls it with its lock held.
type reentrantObserver struct{ s *Store }

func (o *reentrantObserver) X509Minted(*policy.Entry, *X509SVID, bool) { o.s.Stats() }
func (o *reentrantObserver) X509RotationFailed(*policy.Entry, error)   { o.s.Stats() }
func (o *reentrantObserver) JWTMinted(*policy.Entry, *JWTSVID)         { o.s.Stats() }
func (o *reentrantObserver) Revoked(*policy.Entry, string)             { o.s.Stats() }

// Observer calls (metrics, the audit file) happen outside the store's lock:
// a slow audit write must not stall every reader of the store.
func TestObserverRunsOutsideTheLock(t *testing.T) {
	clk := &wallClock{now: time.Now().Round(0)}
	e := entry("/a", "unix:uid:1", time.Minute)
	exp := entry("/b", "unix:uid:2", time.Minute)
	exp.ExpiresAt = clk.Now().Add(time.Second)
	obs := &reentrantObserver{}
	s := clockStore(t, clk, ca.Config{}, obs, e, exp)
	obs.s = s
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := s.X509SVIDs([]*policy.Entry{e}); err != nil {
			t.Error(err)
		}
		clk.Add(time.Minute)
		s.rotateDue()
		s.expireDue()
		ix, _ := policy.NewIndex(nil)
		s.SetIndex(ix)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("deadlock: the observer is called with the store's lock held")
	}
}

// Issue, rotate, expire and observe concurrently, for the race detector.
func TestConcurrentIssueRotateObserve(t *testing.T) {
	clk := &wallClock{now: time.Now().Round(0)}
	e := entry("/a", "unix:uid:1", time.Minute)
	obs := &reentrantObserver{}
	s := clockStore(t, clk, ca.Config{}, obs, e)
	obs.s = s
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				switch i {
				case 0:
					clk.Add(20 * time.Second)
					s.rotateDue()
				case 1:
					cp := *e // NewIndex sets the entry's ID
					ix, _ := policy.NewIndex([]*policy.Entry{&cp})
					s.SetIndex(ix)
				default:
					// The clock jumps 20 s at a time under the mint: an
					// SVID minted just before a jump may be expired by the
					// time it is checked, and is then refused, never served.
					if _, err := s.X509SVIDs([]*policy.Entry{e}); err != nil && !errors.Is(err, ErrUnavailable) {
						t.Error(err)
						return
					}
					_, _ = s.JWTSVIDs([]*policy.Entry{e}, e.SPIFFEID, []string{"x"})
				}
			}
		}()
	}
	wg.Wait()
}
