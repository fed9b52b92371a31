package identity

import (
	"context"
	"crypto/x509"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodeward/nodeward/agent/ca"
	"github.com/nodeward/nodeward/agent/policy"
	"github.com/nodeward/nodeward/attestors/selector"
)

// gatedSource is the real local CA behind a gate the test opens: it stands
// for a source whose mints take a network round trip (a SPIRE server), so
// the tests can hold a mint in flight. It counts mints and can mark chains
// stale and swap its bundles.
type gatedSource struct {
	*LocalSource
	gate    chan struct{} // a mint waits for a receive from it; nil: no wait
	entered chan struct{} // a mint signals here when it starts waiting
	mints   atomic.Int32

	mu      sync.Mutex
	stale   map[string]bool // leaf serials to re-mint
	bundles *Bundles
	changed chan struct{}
}

func newGatedSource(t *testing.T) *gatedSource {
	t.Helper()
	c, err := ca.LoadOrCreate(ca.Config{TrustDomain: td, Dir: t.TempDir() + "/ca"})
	if err != nil {
		t.Fatal(err)
	}
	l, err := NewLocalSource(c)
	if err != nil {
		t.Fatal(err)
	}
	return &gatedSource{LocalSource: l, stale: map[string]bool{}, bundles: l.Bundles(), changed: make(chan struct{})}
}

func (g *gatedSource) MintX509SVID(ctx context.Context, e *policy.Entry) (*ca.X509SVID, error) {
	g.mints.Add(1)
	if g.gate != nil {
		g.entered <- struct{}{}
		select {
		case <-g.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return g.LocalSource.MintX509SVID(ctx, e)
}

func (g *gatedSource) StaleX509(chain []*x509.Certificate) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.stale[chain[0].SerialNumber.Text(16)]
}

func (g *gatedSource) Bundles() *Bundles {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.bundles
}

func (g *gatedSource) BundlesChanged() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.changed
}

func (g *gatedSource) setBundles(b *Bundles) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.bundles = b
	close(g.changed)
	g.changed = make(chan struct{})
}

var otherTD = spiffeid.RequireTrustDomainFromString("other.org")

func sourceStore(t *testing.T, src Source, entries ...*policy.Entry) *Store {
	t.Helper()
	ix, err := policy.NewIndex(entries)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Source: src, Index: ix})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func match(t *testing.T, s *Store, sel string) []*policy.Entry {
	t.Helper()
	es, err := s.Match([]selector.Selector{selector.MustParse(sel)})
	if err != nil {
		t.Fatal(err)
	}
	return es
}

// A mint waiting on the source holds no lock: other callers, status and a
// policy reload go on, and concurrent callers of the same entry share the
// one mint.
func TestMintRunsOutsideTheLockAndIsShared(t *testing.T) {
	src := newGatedSource(t)
	a, b := entry("/a", "unix:uid:1", time.Hour), entry("/b", "unix:uid:2", time.Hour)
	s := sourceStore(t, src, a, b)
	eb := match(t, s, "unix:uid:2")
	if _, err := s.X509SVIDs(eb); err != nil { // cached before the gate closes
		t.Fatal(err)
	}
	src.gate, src.entered = make(chan struct{}), make(chan struct{}, 8)
	ea := match(t, s, "unix:uid:1")
	const callers = 5
	results := make(chan *X509SVID, callers)
	for range callers {
		go func() {
			svs, err := s.X509SVIDs(ea)
			if err != nil {
				t.Error(err)
				results <- nil
				return
			}
			results <- svs[0]
		}()
	}
	<-src.entered // one mint is in flight, holding the gate
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := s.X509SVIDs(eb); err != nil { // cached: no mint
			t.Error(err)
		}
		_ = s.Stats()
		_ = s.X509Snapshot()
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("readers blocked while a mint was in flight")
	}
	close(src.gate)
	var first *X509SVID
	for range callers {
		sv := <-results
		if sv == nil {
			continue
		}
		if first == nil {
			first = sv
		} else if sv != first {
			t.Fatal("concurrent callers got different SVIDs: the mint was not shared")
		}
	}
	if n := src.mints.Load(); n != 2 { // b before the gate, a once
		t.Fatalf("%d mints, want 2", n)
	}
}

// An entry removed from the policy while its SVID is being minted: the
// fresh SVID is not kept, so it can never be served from the cache.
func TestMintForRemovedEntryIsNotKept(t *testing.T) {
	src := newGatedSource(t)
	s := sourceStore(t, src, entry("/a", "unix:uid:1", time.Hour))
	ea := match(t, s, "unix:uid:1")
	src.gate, src.entered = make(chan struct{}), make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		_, err := s.X509SVIDs(ea)
		done <- err
	}()
	<-src.entered
	s.SetIndex(nil) // no lock is held by the mint: this does not wait
	close(src.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := len(s.X509Snapshot()); n != 0 {
		t.Fatalf("%d SVIDs cached for an entry that left the policy", n)
	}
}

// A source that withdraws the authority of a cached SVID (a tainted key)
// gets it re-minted, and a change of the source's bundles wakes every
// watcher.
func TestStaleSVIDReMintedAndBundleChangeNotifies(t *testing.T) {
	src := newGatedSource(t)
	s := sourceStore(t, src, entry("/a", "unix:uid:1", time.Hour))
	ea := match(t, s, "unix:uid:1")
	first, err := s.X509SVIDs(ea)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = s.Run(ctx) }()

	ch, _ := s.Changed()
	nb, err := NewBundles(src.LocalSource.Bundles().Own, spiffebundle.New(otherTD))
	if err != nil {
		t.Fatal(err)
	}
	src.mu.Lock()
	src.stale[first[0].Serial] = true
	src.mu.Unlock()
	src.setBundles(nb)
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("a bundle change did not wake the watchers")
	}
	if s.Bundles() != nb {
		t.Fatal("the store does not serve the source's new bundles")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		snap := s.X509Snapshot()
		if len(snap) == 1 && snap[0].Serial != first[0].Serial {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the SVID of a withdrawn authority was not re-minted")
		}
		time.Sleep(10 * time.Millisecond) // poll with a deadline
	}
	again, err := s.X509SVIDs(ea)
	if err != nil {
		t.Fatal(err)
	}
	if again[0].Serial == first[0].Serial {
		t.Fatal("the stale SVID is still served")
	}
}
