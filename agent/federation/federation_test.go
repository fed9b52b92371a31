package federation

import (
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/nodeward/nodeward/internal/safefs"
)

var (
	tdA = spiffeid.RequireTrustDomainFromString("a.test")
	tdB = spiffeid.RequireTrustDomainFromString("b.test")
)

// fastFetcher is a fetcher config with test-sized bounds (a refresh hint of
// 1s is honoured).
func fastFetcher(t *testing.T, cacheDir string, peers ...Peer) *Fetcher {
	t.Helper()
	f, err := NewFetcher(FetcherConfig{Peers: peers, CacheDir: cacheDir, MinRefresh: 200 * time.Millisecond,
		Retry: 100 * time.Millisecond, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func spiffePeer(t *testing.T, s *side, dir string) Peer {
	t.Helper()
	// The bootstrap bundle as PEM (what `spire-server bundle show` prints).
	file := writeFile(t, dir, s.td.Name()+".bootstrap.pem", certPEM(s.bundle.Load().X509Authorities()...), 0o644)
	return Peer{TrustDomain: s.td, URL: s.url, Profile: ProfileHTTPSSPIFFE, EndpointID: endpointID(s.td), BundleFile: file}
}

// waitBundle waits until f holds a bundle of td equal to want.
func waitBundle(t *testing.T, f *Fetcher, want *spiffebundle.Bundle) {
	t.Helper()
	td := want.TrustDomain()
	deadline := time.After(30 * time.Second)
	for {
		ch := f.Changed()
		if got := f.Bundles()[td]; got != nil && got.Equal(want) {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			got := f.Bundles()[td]
			t.Fatalf("bundle of %s never arrived; have %v, status %+v", td, got, statusOf(f, td))
		}
	}
}

// withHint is b as an endpoint with refresh hint h publishes it.
func withHint(b *spiffebundle.Bundle, h time.Duration) *spiffebundle.Bundle {
	c := b.Clone()
	c.SetRefreshHint(h)
	return c
}

// TestFederateHTTPSSPIFFE: two trust domains, each with a bundle endpoint
// and a fetcher of the other's, federate over https_spiffe; an X509-SVID of
// each verifies (go-spiffe's x509svid.Verify) against the bundle the other
// fetched, and the JWT keys arrive too. A root rotated on one side (new root
// published, then the endpoint's SVID signed by it, then the old root
// dropped) reaches the other side at the refresh hint with no failed fetch.
func TestFederateHTTPSSPIFFE(t *testing.T) {
	dir := t.TempDir()
	hint := time.Second
	a := startSide(t, tdA, EndpointConfig{Profile: ProfileHTTPSSPIFFE, RefreshHint: hint})
	b := startSide(t, tdB, EndpointConfig{Profile: ProfileHTTPSSPIFFE, RefreshHint: hint})
	// A bootstraps from PEM, B from SPIFFE bundle JSON.
	fa := fastFetcher(t, filepath.Join(dir, "a", "federation"), spiffePeer(t, b, dir))
	bootB := writeFile(t, dir, "a.test.bundle.json", marshal(t, a.bundle.Load()), 0o644)
	fb := fastFetcher(t, filepath.Join(dir, "b", "federation"),
		Peer{TrustDomain: tdA, URL: a.url, Profile: ProfileHTTPSSPIFFE, EndpointID: endpointID(tdA), BundleFile: bootB})
	if st := statusOf(fa, tdB); st.Source != "bootstrap" || fa.Bundles()[tdB] == nil {
		t.Fatalf("before Run: %+v", st)
	}
	run(t, fa.Run)
	run(t, fb.Run)
	waitBundle(t, fa, withHint(b.bundle.Load(), hint))
	waitBundle(t, fb, withHint(a.bundle.Load(), hint))
	if st := statusOf(fa, tdB); st.Source != "endpoint" || !st.HasSequence || st.Sequence != 1 || st.LastRefresh.IsZero() ||
		!st.NextRefresh.After(st.LastAttempt) || st.LastError != "" {
		t.Errorf("status = %+v", st)
	}
	// The next refresh is at the hint, less at most a tenth (jitter).
	if st := statusOf(fa, tdB); st.NextRefresh.Sub(st.LastAttempt) > hint || st.NextRefresh.Sub(st.LastAttempt) < hint*9/10 {
		t.Errorf("next refresh in %v, want the hint %v less at most 10%%", st.NextRefresh.Sub(st.LastAttempt), hint)
	}

	// Cross-domain verification with the fetched bundles.
	svidA := a.ca.svid(t, spiffeid.RequireFromPath(tdA, "/web"))
	svidB := b.ca.svid(t, spiffeid.RequireFromPath(tdB, "/db"))
	if _, _, err := x509svid.Verify(svidB.Certificates, spiffebundle.NewSet(fa.Bundles()[tdB])); err != nil {
		t.Errorf("b's SVID against a's fetched bundle: %v", err)
	}
	if _, _, err := x509svid.Verify(svidA.Certificates, spiffebundle.NewSet(fb.Bundles()[tdA])); err != nil {
		t.Errorf("a's SVID against b's fetched bundle: %v", err)
	}
	if got, want := fa.Bundles()[tdB].JWTAuthorities(), b.bundle.Load().JWTAuthorities(); len(got) != 1 || len(want) != 1 {
		t.Errorf("jwt authorities: got %d, want 1", len(got))
	}

	// Rotation on B: publish the next root beside the old one...
	next := newTestCA(t, tdB)
	b.bundle.Store(bundleOf(t, 2, b.ca, next))
	waitBundle(t, fa, withHint(b.bundle.Load(), hint))
	// ...then the endpoint's SVID comes from the new root, and the old root
	// leaves the bundle: fetched with the new root only.
	b.svid.Store(next.svid(t, endpointID(tdB)))
	b.bundle.Store(bundleOf(t, 3, next))
	waitBundle(t, fa, withHint(b.bundle.Load(), hint))
	if st := statusOf(fa, tdB); st.Sequence != 3 || st.Failures != 0 {
		t.Errorf("after rotation: %+v", st)
	}
	if _, _, err := x509svid.Verify(next.svid(t, spiffeid.RequireFromPath(tdB, "/db")).Certificates, spiffebundle.NewSet(fa.Bundles()[tdB])); err != nil {
		t.Errorf("SVID of the rotated root: %v", err)
	}
	if _, _, err := x509svid.Verify(svidB.Certificates, spiffebundle.NewSet(fa.Bundles()[tdB])); err == nil {
		t.Error("an SVID of the removed root still verifies")
	}
}

// TestFederateHTTPSWeb: two trust domains federate over https_web, each
// endpoint with a certificate of a test web PKI whose root the fetchers
// trust (ca); an SVID of each verifies against the bundle the other
// fetched. Without that root (system roots) the endpoint is refused. A
// renewed certificate file is served without a restart.
func TestFederateHTTPSWeb(t *testing.T) {
	dir := t.TempDir()
	pki := newWebPKI(t, dir)
	tlsDir := func(name string) string {
		d := filepath.Join(dir, name)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	dirA, dirB := tlsDir("tls-a"), tlsDir("tls-b")
	certA, keyA, _ := pki.serverFiles(t, dirA)
	certB, keyB, cert1 := pki.serverFiles(t, dirB)
	a := startSide(t, tdA, EndpointConfig{Profile: ProfileHTTPSWeb, CertFile: certA, KeyFile: keyA, RefreshHint: time.Second})
	b := startSide(t, tdB, EndpointConfig{Profile: ProfileHTTPSWeb, CertFile: certB, KeyFile: keyB, RefreshHint: time.Second})
	fa := fastFetcher(t, filepath.Join(dir, "a", "federation"), Peer{TrustDomain: tdB, URL: b.url, Profile: ProfileHTTPSWeb, CAFile: pki.rootFile})
	fb := fastFetcher(t, filepath.Join(dir, "b", "federation"), Peer{TrustDomain: tdA, URL: a.url, Profile: ProfileHTTPSWeb, CAFile: pki.rootFile})
	if st := statusOf(fa, tdB); st.Source != "none" || fa.Bundles()[tdB] != nil {
		t.Fatalf("before Run: %+v", st)
	}
	run(t, fa.Run)
	run(t, fb.Run)
	waitBundle(t, fa, withHint(b.bundle.Load(), time.Second))
	waitBundle(t, fb, withHint(a.bundle.Load(), time.Second))
	if _, _, err := x509svid.Verify(b.ca.svid(t, spiffeid.RequireFromPath(tdB, "/db")).Certificates, spiffebundle.NewSet(fa.Bundles()[tdB])); err != nil {
		t.Errorf("b's SVID against a's fetched bundle: %v", err)
	}
	if _, _, err := x509svid.Verify(a.ca.svid(t, spiffeid.RequireFromPath(tdA, "/web")).Certificates, spiffebundle.NewSet(fb.Bundles()[tdA])); err != nil {
		t.Errorf("a's SVID against b's fetched bundle: %v", err)
	}

	// Without the test root (system roots only) the endpoint is refused.
	fs := fastFetcher(t, filepath.Join(dir, "cache2"), Peer{TrustDomain: tdB, URL: b.url, Profile: ProfileHTTPSWeb})
	run(t, fs.Run)
	waitFor(t, "a failed fetch without the web root", func() bool { return statusOf(fs, tdB).Failures > 0 })
	if st := statusOf(fs, tdB); !strings.Contains(st.LastError, "certificate") || fs.Bundles()[tdB] != nil {
		t.Errorf("system roots: %+v", st)
	}

	// Renewal: new files renamed into place are used at the next handshake.
	_, _, cert2 := pki.serverFiles(t, dirB)
	waitFor(t, "the renewed certificate", func() bool { return servedCert(t, b.url, pki.root).Equal(cert2) })
	if cert1.Equal(cert2) {
		t.Fatal("test certificates not distinct")
	}
}

// servedCert returns the leaf certificate the endpoint at url presents.
func servedCert(t *testing.T, url string, root *x509.Certificate) *x509.Certificate {
	t.Helper()
	resp, err := webClient(root).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.TLS.PeerCertificates[0]
}

// TestRestartOfflineFromCache: a fetcher started again while the endpoint
// is down serves the cached bundle (not the older bootstrap bundle) at once
// and keeps it while fetches fail.
func TestRestartOfflineFromCache(t *testing.T) {
	dir := t.TempDir()
	cache := filepath.Join(dir, "federation")
	b := startSide(t, tdB, EndpointConfig{Profile: ProfileHTTPSSPIFFE, RefreshHint: time.Second})
	peer := spiffePeer(t, b, dir)
	next := newTestCA(t, tdB)
	b.bundle.Store(bundleOf(t, 7, b.ca, next))
	want := withHint(b.bundle.Load(), time.Second)

	f1 := fastFetcher(t, cache, peer)
	ctx := startCancelable(t, f1.Run)
	waitBundle(t, f1, want)
	ctx()
	if err := b.ep.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(filepath.Join(cache, "b.test.json"))
	if err != nil || fi.Mode().Perm() != 0o644 || !fi.Mode().IsRegular() {
		t.Fatalf("cache file: %v, %v", fi, err)
	}

	f2 := fastFetcher(t, cache, peer) // bootstrap file still holds sequence 1
	if got := f2.Bundles()[tdB]; got == nil || !got.Equal(want) || statusOf(f2, tdB).Source != "cache" {
		t.Fatalf("after restart: %v, %+v", got, statusOf(f2, tdB))
	}
	run(t, f2.Run)
	waitFor(t, "fetches against the stopped endpoint to fail", func() bool { return statusOf(f2, tdB).Failures >= 2 })
	if got := f2.Bundles()[tdB]; !got.Equal(want) {
		t.Errorf("the cached bundle was dropped: %v", got)
	}
}

// TestWrongEndpointIDRefused: an https_spiffe endpoint presenting another
// SPIFFE ID than endpoint_spiffe_id is refused; the bootstrap bundle stays.
func TestWrongEndpointIDRefused(t *testing.T) {
	dir := t.TempDir()
	b := startSide(t, tdB, EndpointConfig{Profile: ProfileHTTPSSPIFFE})
	boot := b.bundle.Load()
	b.bundle.Store(bundleOf(t, 2, b.ca))
	p := spiffePeer(t, b, dir)
	p.EndpointID = spiffeid.RequireFromPath(tdB, "/not-the-endpoint")
	f := fastFetcher(t, filepath.Join(dir, "cache"), p)
	run(t, f.Run)
	waitFor(t, "a refused fetch", func() bool { return statusOf(f, tdB).Failures > 0 })
	st := statusOf(f, tdB)
	if !strings.Contains(st.LastError, "unexpected ID") || st.Source != "bootstrap" {
		t.Errorf("status = %+v", st)
	}
	if got := f.Bundles()[tdB]; !sameRoots(got, boot) {
		t.Errorf("bundle replaced: %v", got)
	}

	// An endpoint whose SVID does not chain to the known bundle (another
	// CA of the same trust domain) is refused too.
	b.svid.Store(newTestCA(t, tdB).svid(t, endpointID(tdB)))
	f2 := fastFetcher(t, filepath.Join(dir, "cache2"), spiffePeer(t, b, dir))
	// spiffePeer wrote the current (seq 2) roots; the endpoint's SVID is
	// from a CA outside them.
	run(t, f2.Run)
	waitFor(t, "a refused fetch", func() bool { return statusOf(f2, tdB).Failures > 0 })
	if st := statusOf(f2, tdB); !strings.Contains(st.LastError, "certificate signed by unknown authority") && !strings.Contains(st.LastError, "x509svid") {
		t.Errorf("status = %+v", st)
	}
}

func sameRoots(a, b *spiffebundle.Bundle) bool {
	if a == nil || b == nil {
		return false
	}
	return spiffebundle.FromX509Authorities(a.TrustDomain(), a.X509Authorities()).Equal(spiffebundle.FromX509Authorities(b.TrustDomain(), b.X509Authorities()))
}

// TestPlantedCacheFilesRefused: a symlink, a group-writable file or a
// directory in place of a cache file stops NewFetcher (as data_dir's keys
// do), naming the file; a cache file that does not parse is ignored.
func TestPlantedCacheFilesRefused(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, tdB)
	boot := writeFile(t, dir, "boot.pem", certPEM(ca.cert), 0o644)
	peer := Peer{TrustDomain: tdB, URL: "https://127.0.0.1:1/", Profile: ProfileHTTPSSPIFFE, EndpointID: endpointID(tdB), BundleFile: boot}
	other := writeFile(t, dir, "other.json", marshal(t, bundleOf(t, 9, newTestCA(t, tdB))), 0o644)
	for _, tc := range []struct {
		name  string
		plant func(path string) error
	}{
		{"symlink", func(p string) error { return os.Symlink(other, p) }},
		{"group-writable", func(p string) error {
			if err := os.WriteFile(p, marshal(t, bundleOf(t, 9, ca)), 0o644); err != nil {
				return err
			}
			return os.Chmod(p, 0o664)
		}},
		{"directory", func(p string) error { return os.Mkdir(p, 0o755) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cache := filepath.Join(t.TempDir(), "federation")
			if err := os.Mkdir(cache, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := tc.plant(filepath.Join(cache, "b.test.json")); err != nil {
				t.Fatal(err)
			}
			_, err := NewFetcher(FetcherConfig{Peers: []Peer{peer}, CacheDir: cache})
			if !errors.Is(err, safefs.ErrUnsafe) || !strings.Contains(err.Error(), "b.test.json") {
				t.Fatalf("err = %v, want %v naming the file", err, safefs.ErrUnsafe)
			}
		})
	}
	t.Run("symlinked cache dir of another owner", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root to make a file of another owner")
		}
		parent := t.TempDir()
		target := filepath.Join(parent, "elsewhere")
		if err := os.Mkdir(target, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(target, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		cache := filepath.Join(parent, "federation")
		if err := os.Symlink(target, cache); err != nil {
			t.Fatal(err)
		}
		if _, err := NewFetcher(FetcherConfig{Peers: []Peer{peer}, CacheDir: cache}); !errors.Is(err, safefs.ErrUnsafe) {
			t.Fatalf("err = %v, want %v", err, safefs.ErrUnsafe)
		}
	})
	t.Run("garbage ignored", func(t *testing.T) {
		cache := filepath.Join(t.TempDir(), "federation")
		if err := os.Mkdir(cache, 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, cache, "b.test.json", []byte("not json"), 0o644)
		f, err := NewFetcher(FetcherConfig{Peers: []Peer{peer}, CacheDir: cache})
		if err != nil {
			t.Fatal(err)
		}
		if st := statusOf(f, tdB); st.Source != "bootstrap" {
			t.Errorf("status = %+v", st)
		}
	})
}

// TestRefreshInterval: the hint is honoured within the bounds; without a
// hint the default applies; failures back off from Retry, doubling, up to
// the refresh interval.
func TestRefreshInterval(t *testing.T) {
	f, err := NewFetcher(FetcherConfig{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	hinted := func(h time.Duration) *spiffebundle.Bundle {
		b := spiffebundle.New(tdB)
		b.SetRefreshHint(h)
		return b
	}
	for _, tc := range []struct {
		b    *spiffebundle.Bundle
		want time.Duration
	}{
		{nil, DefaultRefreshHint},
		{spiffebundle.New(tdB), DefaultRefreshHint},
		{hinted(time.Second), DefaultMinRefresh},
		{hinted(90 * time.Second), 90 * time.Second},
		{hinted(48 * time.Hour), DefaultMaxRefresh},
	} {
		if got := f.interval(tc.b); got != tc.want {
			t.Errorf("interval(%v) = %v, want %v", tc.b, got, tc.want)
		}
	}
	if _, err := NewFetcher(FetcherConfig{CacheDir: t.TempDir(), MinRefresh: time.Hour, MaxRefresh: time.Minute}); !errors.Is(err, ErrConfig) {
		t.Errorf("min above max: %v", err)
	}
	if _, err := NewFetcher(FetcherConfig{CacheDir: "relative"}); !errors.Is(err, ErrConfig) {
		t.Errorf("relative cache dir: %v", err)
	}
	if _, err := NewFetcher(FetcherConfig{CacheDir: t.TempDir(), Peers: []Peer{{TrustDomain: tdB, URL: "http://b.test/", Profile: ProfileHTTPSWeb}}}); !errors.Is(err, ErrConfig) {
		t.Errorf("http URL: %v", err)
	}
	if _, err := NewFetcher(FetcherConfig{CacheDir: t.TempDir(), Peers: []Peer{{TrustDomain: tdB, URL: "https://b.test/", Profile: ProfileHTTPSSPIFFE,
		EndpointID: endpointID(tdA), BundleFile: "/nonexistent"}}}); !errors.Is(err, ErrConfig) {
		t.Errorf("endpoint ID of another trust domain: %v", err)
	}

	// Backoff on a real failing fetch (nothing listens on the port).
	dir := t.TempDir()
	ca := newTestCA(t, tdB)
	boot := writeFile(t, dir, "boot.pem", certPEM(ca.cert), 0o644)
	ff, err := NewFetcher(FetcherConfig{CacheDir: filepath.Join(dir, "c"), Retry: 10 * time.Millisecond, MinRefresh: 100 * time.Millisecond,
		DefaultRefresh: 100 * time.Millisecond, Peers: []Peer{{TrustDomain: tdB, URL: "https://127.0.0.1:1/", Profile: ProfileHTTPSSPIFFE,
			EndpointID: endpointID(tdB), BundleFile: boot}}})
	if err != nil {
		t.Fatal(err)
	}
	var waits []time.Duration
	for range 6 {
		next := ff.peers[0].record(nil, errors.New("unreachable"))
		waits = append(waits, next.Sub(statusOf(ff, tdB).LastAttempt))
	}
	for i, want := range []time.Duration{10, 20, 40, 80, 100, 100} {
		want *= time.Millisecond
		if waits[i] > want || waits[i] < want*9/10 {
			t.Errorf("retry %d after %v, want %v (less at most 10%%)", i+1, waits[i], want)
		}
	}
	if st := statusOf(ff, tdB); st.Failures != 6 || st.LastError != "unreachable" || st.Source != "bootstrap" {
		t.Errorf("status = %+v", st)
	}
}
