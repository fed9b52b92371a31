package identity

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodeward/nodeward/agent/ca"
	"github.com/nodeward/nodeward/agent/policy"
	"github.com/nodeward/nodeward/attestors/selector"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func newStore(t *testing.T, entries ...*policy.Entry) *Store {
	t.Helper()
	c, err := ca.LoadOrCreate(ca.Config{TrustDomain: td, Dir: t.TempDir() + "/ca"})
	if err != nil {
		t.Fatal(err)
	}
	ix, err := policy.NewIndex(entries)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{CA: c, Index: ix})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func entry(path, sel string, ttl time.Duration) *policy.Entry {
	return &policy.Entry{
		SPIFFEID:  spiffeid.RequireFromPath(td, path),
		Selectors: []selector.Selector{selector.MustParse(sel)},
		X509TTL:   ttl,
		JWTTTL:    5 * time.Minute,
	}
}

func TestX509SVIDsAreSharedPerEntry(t *testing.T) {
	s := newStore(t, entry("/a", "unix:uid:1", time.Hour))
	es, err := s.Match([]selector.Selector{selector.MustParse("unix:uid:1")})
	if err != nil {
		t.Fatal(err)
	}
	a, err := s.X509SVIDs(es)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.X509SVIDs(es)
	if err != nil {
		t.Fatal(err)
	}
	if a[0] != b[0] {
		t.Fatal("second call minted a new SVID instead of serving the cached one")
	}
	// NotBefore is backdated 10 s; the lifetime that counts starts at minting.
	minted := a[0].SVID.Certificates[0].NotBefore.Add(10 * time.Second)
	life := a[0].SVID.Certificates[0].NotAfter.Sub(minted)
	since := a[0].RotateAt.Sub(minted)
	if since < life/2-time.Second || since >= life*3/4+time.Second {
		t.Fatalf("rotation at %v of lifetime %v, want within [50%%, 75%%)", since, life)
	}
}

func TestNoMatchIsErrNoIdentity(t *testing.T) {
	s := newStore(t, entry("/a", "unix:uid:1", time.Hour))
	if _, err := s.Match([]selector.Selector{selector.MustParse("unix:uid:2")}); err != ErrNoIdentity {
		t.Fatalf("err = %v, want ErrNoIdentity", err)
	}
}

func TestRunRotatesAndNotifies(t *testing.T) {
	now := time.Now()
	var clock = func() time.Time { return now }
	s := newStore(t, entry("/a", "unix:uid:1", time.Hour))
	s.clock = clock
	es, _ := s.Match([]selector.Selector{selector.MustParse("unix:uid:1")})
	first, err := s.X509SVIDs(es)
	if err != nil {
		t.Fatal(err)
	}
	ch, v := s.Changed()
	// Move the clock past the rotation point and let one pass of the loop run.
	now = first[0].RotateAt.Add(time.Second)
	next := s.rotateDue()
	select {
	case <-ch:
	default:
		t.Fatal("rotation did not notify watchers")
	}
	if _, v2 := s.Changed(); v2 != v+1 {
		t.Fatalf("version %d -> %d", v, v2)
	}
	second, _ := s.X509SVIDs(es)
	if second[0] == first[0] || second[0].SVID.Certificates[0].SerialNumber.Cmp(first[0].SVID.Certificates[0].SerialNumber) == 0 {
		t.Fatal("SVID not re-minted")
	}
	if !next.Equal(second[0].RotateAt) {
		t.Fatalf("next rotation %v, want %v", next, second[0].RotateAt)
	}
}

func TestRunStopsOnCancel(t *testing.T) {
	s := newStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestSetIndexDropsRevoked(t *testing.T) {
	a := entry("/a", "unix:uid:1", time.Hour)
	s := newStore(t, a)
	es, _ := s.Match([]selector.Selector{selector.MustParse("unix:uid:1")})
	if _, err := s.X509SVIDs(es); err != nil {
		t.Fatal(err)
	}
	if _, err := s.JWTSVIDs(es, spiffeid.ID{}, []string{"x"}); err != nil {
		t.Fatal(err)
	}
	ch, _ := s.Changed()
	s.SetIndex(policy.Empty)
	select {
	case <-ch:
	default:
		t.Fatal("SetIndex did not notify")
	}
	st := s.Stats()
	if st.X509SVIDs != 0 || st.JWTSVIDs != 0 || st.Entries != 0 {
		t.Fatalf("after revocation: %+v", st)
	}
}

func TestJWTCachePerAudienceSet(t *testing.T) {
	s := newStore(t, entry("/a", "unix:uid:1", time.Hour))
	es, _ := s.Match([]selector.Selector{selector.MustParse("unix:uid:1")})
	x, err := s.JWTSVIDs(es, spiffeid.ID{}, []string{"b", "a"})
	if err != nil {
		t.Fatal(err)
	}
	y, _ := s.JWTSVIDs(es, spiffeid.ID{}, []string{"a", "b"})
	z, _ := s.JWTSVIDs(es, spiffeid.ID{}, []string{"a"})
	if x[0].Token != y[0].Token {
		t.Error("same audience set in another order was not served from the cache")
	}
	if x[0].Token == z[0].Token {
		t.Error("different audience set shared a token")
	}
	if _, err := s.JWTSVIDs(es, spiffeid.RequireFromString("spiffe://example.org/other"), []string{"a"}); err != ErrNotEntitled {
		t.Errorf("other ID: %v, want ErrNotEntitled", err)
	}
}

func TestValidateCacheStillChecksAudienceAndExpiry(t *testing.T) {
	now := time.Now()
	s := newStore(t, entry("/a", "unix:uid:1", time.Hour))
	s.clock = func() time.Time { return now }
	es, _ := s.Match([]selector.Selector{selector.MustParse("unix:uid:1")})
	j, err := s.JWTSVIDs(es, spiffeid.ID{}, []string{"aud"})
	if err != nil {
		t.Fatal(err)
	}
	tok := j[0].Token
	for i := range 2 { // first verifies the signature, second comes from the cache
		if _, err := s.ValidateJWTSVID(tok, "aud"); err != nil {
			t.Fatalf("validation %d: %v", i, err)
		}
	}
	if _, err := s.ValidateJWTSVID(tok, "other"); err == nil {
		t.Fatal("cached token accepted for another audience")
	}
	if _, err := s.ValidateJWTSVID(tok[:len(tok)-2]+"xx", "aud"); err == nil {
		t.Fatal("tampered token accepted")
	}
	now = j[0].ExpiresAt.Add(time.Second)
	if _, err := s.ValidateJWTSVID(tok, "aud"); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired cached token: %v", err)
	}
}

// recordingObserver records revocations (a test double for metrics/audit).
type recordingObserver struct {
	nopObserver
	revoked []string
}

func (r *recordingObserver) Revoked(e *policy.Entry, reason string) {
	r.revoked = append(r.revoked, e.SPIFFEID.Path()+":"+reason)
}

func TestExpiredEntryStopsIssuing(t *testing.T) {
	now := time.Now()
	e := entry("/temp", "unix:uid:1", time.Hour)
	e.ExpiresAt = now.Add(time.Minute)
	s := newStore(t, e)
	obs := &recordingObserver{}
	s.obs = obs
	s.clock = func() time.Time { return now }
	caller := []selector.Selector{selector.MustParse("unix:uid:1")}
	es, err := s.Match(caller)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.X509SVIDs(es); err != nil {
		t.Fatal(err)
	}
	if next := s.expireDue(); !next.Equal(e.ExpiresAt) {
		t.Fatalf("next expiry %v, want %v", next, e.ExpiresAt)
	}
	ch, _ := s.Changed()
	now = e.ExpiresAt
	if _, err := s.Match(caller); err != ErrNoIdentity {
		t.Fatalf("expired entry still matches: %v", err)
	}
	s.expireDue()
	select {
	case <-ch:
	default:
		t.Fatal("expiry did not notify watchers")
	}
	if st := s.Stats(); st.X509SVIDs != 0 {
		t.Fatalf("SVID of an expired entry kept: %+v", st)
	}
	s.expireDue() // reported once only
	if strings.Join(obs.revoked, ",") != "/temp:expired" {
		t.Fatalf("revocations = %v", obs.revoked)
	}
}
