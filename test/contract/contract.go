// Package contract is the Workload API contract every identity source must
// pass: the local CA (standalone mode) and a SPIRE server (fleet mode).
// The suite drives a running agent through a Harness, as a workload: the
// go-spiffe v2 client over the agent's real socket, the test process being
// the caller (its uid and binary are the selectors).
package contract

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Entry is a registration entry as the suite asks for it.
type Entry struct {
	// Path is the SPIFFE ID's path in the harness's trust domain.
	Path string
	// Selectors in "type:key:value" form; the suite passes SelfSelectors.
	Selectors []string
	// X509TTL is the X.509-SVID lifetime; zero: the source's default.
	X509TTL time.Duration
	// FederatesWith names foreign trust domains (Harness.Federation).
	FederatesWith []string
}

// Harness runs one agent with one identity source.
type Harness interface {
	// Start starts the agent (with no entries) and returns its Workload
	// API address ("unix:///path").
	Start(t *testing.T) string
	// TrustDomain is the trust domain of the agent's identities.
	TrustDomain() spiffeid.TrustDomain
	// AddEntry registers e and returns its id; the agent may serve it later
	// (the suite waits).
	AddEntry(t *testing.T, e Entry) string
	// RemoveEntry deletes the entry with id.
	RemoveEntry(t *testing.T, id string)
	// ShortX509TTL is the shortest X.509 TTL the source honours (the
	// rotation case uses it); zero skips that case.
	ShortX509TTL() time.Duration
	// Federation returns a foreign trust domain whose bundle the source
	// holds, or the zero value when the source cannot federate (the
	// federation case is skipped).
	Federation(t *testing.T) spiffeid.TrustDomain
	// Propagation bounds how long a policy change takes to reach an open
	// stream.
	Propagation() time.Duration
}

// SelfSelectors are the selectors of the test process: its effective uid
// and its binary (a bare uid would be a broad selector when run as root).
func SelfSelectors() []string {
	exe, err := os.Executable()
	if err != nil {
		panic(err)
	}
	return []string{fmt.Sprintf("unix:uid:%d", os.Geteuid()), "unix:path:" + exe}
}

// Run runs every case of the contract against h. Cases share one agent.
func Run(t *testing.T, h Harness) {
	addr := h.Start(t)
	td := h.TrustDomain()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	c, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	wait := h.Propagation() + 20*time.Second

	// The cases run in order: each leaves the policy as it found it.
	t.Run("NoEntryIsPermissionDenied", func(t *testing.T) {
		_, err := c.FetchX509Context(ctx)
		wantCode(t, err, codes.PermissionDenied)
		_, err = c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "x"})
		wantCode(t, err, codes.PermissionDenied)
		_, err = c.FetchX509Bundles(ctx)
		wantCode(t, err, codes.PermissionDenied)
	})

	t.Run("X509SVIDChainsToTheBundle", func(t *testing.T) {
		id := h.AddEntry(t, Entry{Path: "/contract/x509", Selectors: SelfSelectors()})
		defer h.RemoveEntry(t, id)
		want := spiffeid.RequireFromPath(td, "/contract/x509")
		xc := poll(t, wait, "the X.509-SVID", func() (*workloadapi.X509Context, bool) {
			xc, err := c.FetchX509Context(ctx)
			return xc, err == nil && hasID(xc, want)
		})
		sv := svidOf(xc, want)
		b, err := xc.Bundles.GetX509BundleForTrustDomain(td)
		if err != nil {
			t.Fatalf("the response has no bundle of %s: %v", td, err)
		}
		if _, _, err := x509svid.Verify(sv.Certificates, b); err != nil {
			t.Fatalf("the SVID does not chain to its bundle: %v", err)
		}
		if sv.PrivateKey == nil || !sv.Certificates[0].NotAfter.After(time.Now()) {
			t.Fatal("SVID without key or already expired")
		}
		bs, err := c.FetchX509Bundles(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := bs.GetX509BundleForTrustDomain(td); err != nil {
			t.Fatalf("FetchX509Bundles lacks the own trust domain: %v", err)
		}
	})

	t.Run("JWTSVIDValidates", func(t *testing.T) {
		id := h.AddEntry(t, Entry{Path: "/contract/jwt", Selectors: SelfSelectors()})
		defer h.RemoveEntry(t, id)
		want := spiffeid.RequireFromPath(td, "/contract/jwt")
		sv := poll(t, wait, "the JWT-SVID", func() (*jwtsvid.SVID, bool) {
			sv, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "contract", Subject: want})
			return sv, err == nil
		})
		bundles, err := c.FetchJWTBundles(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := jwtsvid.ParseAndValidate(sv.Marshal(), bundles, []string{"contract"}); err != nil {
			t.Fatalf("the JWT-SVID does not validate against FetchJWTBundles: %v", err)
		}
		got, err := c.ValidateJWTSVID(ctx, sv.Marshal(), "contract")
		if err != nil {
			t.Fatalf("ValidateJWTSVID: %v", err)
		}
		if got.ID != want {
			t.Fatalf("validated subject %s, want %s", got.ID, want)
		}
		_, err = c.ValidateJWTSVID(ctx, sv.Marshal(), "another-audience")
		wantCode(t, err, codes.InvalidArgument)
		_, err = c.ValidateJWTSVID(ctx, "not.a.token", "contract")
		wantCode(t, err, codes.InvalidArgument)
		// An ID the caller has no entry for.
		_, err = c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "contract", Subject: spiffeid.RequireFromPath(td, "/contract/not-mine")})
		wantCode(t, err, codes.PermissionDenied)
		if _, err := jwtbundle.Parse(td, mustJWKS(t, bundles, td)); err != nil {
			t.Fatalf("JWT bundle is not a JWKS: %v", err)
		}
	})

	t.Run("StreamFollowsThePolicy", func(t *testing.T) {
		a := h.AddEntry(t, Entry{Path: "/contract/stream-a", Selectors: SelfSelectors()})
		idA := spiffeid.RequireFromPath(td, "/contract/stream-a")
		idB := spiffeid.RequireFromPath(td, "/contract/stream-b")
		w := watch(t, ctx, c)
		w.next(t, wait, "first SVID", func(xc *workloadapi.X509Context) bool { return hasID(xc, idA) })
		b := h.AddEntry(t, Entry{Path: "/contract/stream-b", Selectors: SelfSelectors()})
		w.next(t, wait, "a second entry's SVID on the open stream", func(xc *workloadapi.X509Context) bool {
			return hasID(xc, idA) && hasID(xc, idB)
		})
		h.RemoveEntry(t, a)
		w.next(t, wait, "the removed entry's SVID gone from the open stream", func(xc *workloadapi.X509Context) bool {
			return !hasID(xc, idA) && hasID(xc, idB)
		})
		h.RemoveEntry(t, b)
		w.failed(t, wait, codes.PermissionDenied)
	})

	t.Run("RotationBeforeExpiry", func(t *testing.T) {
		ttl := h.ShortX509TTL()
		if ttl == 0 {
			t.Skip("the source sets no short X.509 TTL")
		}
		id := h.AddEntry(t, Entry{Path: "/contract/rotate", Selectors: SelfSelectors(), X509TTL: ttl})
		defer h.RemoveEntry(t, id)
		want := spiffeid.RequireFromPath(td, "/contract/rotate")
		w := watch(t, ctx, c)
		first := w.next(t, wait, "first SVID", func(xc *workloadapi.X509Context) bool { return hasID(xc, want) })
		old := svidOf(first, want).Certificates[0]
		w.next(t, wait+ttl, "a rotated SVID", func(xc *workloadapi.X509Context) bool {
			sv := svidOf(xc, want)
			return sv != nil && sv.Certificates[0].SerialNumber.Cmp(old.SerialNumber) != 0
		})
		if got := time.Now(); !got.Before(old.NotAfter) {
			t.Fatalf("rotated at %s, after the old SVID expired (%s)", got, old.NotAfter)
		}
	})

	t.Run("FederatedBundles", func(t *testing.T) {
		fed := h.Federation(t)
		if fed.IsZero() {
			t.Skip("the source does not federate")
		}
		id := h.AddEntry(t, Entry{Path: "/contract/federated", Selectors: SelfSelectors(), FederatesWith: []string{fed.Name()}})
		defer h.RemoveEntry(t, id)
		want := spiffeid.RequireFromPath(td, "/contract/federated")
		poll(t, wait, "the federated bundle", func() (*workloadapi.X509Context, bool) {
			xc, err := c.FetchX509Context(ctx)
			if err != nil || !hasID(xc, want) {
				return nil, false
			}
			_, err = xc.Bundles.GetX509BundleForTrustDomain(fed)
			return xc, err == nil
		})
		poll(t, wait, "the federated JWT bundle", func() (*jwtbundle.Set, bool) {
			jb, err := c.FetchJWTBundles(ctx)
			if err != nil {
				return nil, false
			}
			_, err = jb.GetJWTBundleForTrustDomain(fed)
			return jb, err == nil
		})
	})
}

func wantCode(t *testing.T, err error, code codes.Code) {
	t.Helper()
	if got := status.Code(err); got != code {
		t.Fatalf("error %v (code %s), want code %s", err, got, code)
	}
}

func hasID(xc *workloadapi.X509Context, id spiffeid.ID) bool { return svidOf(xc, id) != nil }

func svidOf(xc *workloadapi.X509Context, id spiffeid.ID) *x509svid.SVID {
	if xc == nil {
		return nil
	}
	i := slices.IndexFunc(xc.SVIDs, func(s *x509svid.SVID) bool { return s.ID == id })
	if i < 0 {
		return nil
	}
	return xc.SVIDs[i]
}

func mustJWKS(t *testing.T, set *jwtbundle.Set, td spiffeid.TrustDomain) []byte {
	t.Helper()
	b, err := set.GetJWTBundleForTrustDomain(td)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// poll calls f until it reports ok, failing the test after d.
func poll[T any](t *testing.T, d time.Duration, what string, f func() (T, bool)) T {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		v, ok := f()
		if ok {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// watcher is an open FetchX509SVID stream (go-spiffe's watcher).
type watcher struct {
	updates chan *workloadapi.X509Context
	errs    chan error
}

func watch(t *testing.T, ctx context.Context, c *workloadapi.Client) *watcher {
	w := &watcher{updates: make(chan *workloadapi.X509Context, 64), errs: make(chan error, 64)}
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.WatchX509Context(wctx, w)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

func (w *watcher) OnX509ContextUpdate(xc *workloadapi.X509Context) { w.updates <- xc }

func (w *watcher) OnX509ContextWatchError(err error) {
	if status.Code(err) != codes.Canceled && !errors.Is(err, context.Canceled) {
		w.errs <- err
	}
}

// next waits for an update for which ok holds (earlier ones are skipped).
func (w *watcher) next(t *testing.T, d time.Duration, what string, ok func(*workloadapi.X509Context) bool) *workloadapi.X509Context {
	t.Helper()
	timeout := time.After(d)
	var seen []string
	for {
		select {
		case xc := <-w.updates:
			if ok(xc) {
				return xc
			}
			ids := make([]string, 0, len(xc.SVIDs))
			for _, s := range xc.SVIDs {
				ids = append(ids, s.ID.String())
			}
			seen = append(seen, "["+strings.Join(ids, " ")+"]")
		case err := <-w.errs:
			seen = append(seen, "error: "+err.Error())
		case <-timeout:
			t.Fatalf("timed out after %s waiting for %s; the stream sent %v", d, what, seen)
		}
	}
}

// failed waits for the stream to report an error with code.
func (w *watcher) failed(t *testing.T, d time.Duration, code codes.Code) {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case <-w.updates:
		case err := <-w.errs:
			if status.Code(err) == code {
				return
			}
		case <-timeout:
			t.Fatalf("timed out after %s waiting for a %s error on the stream", d, code)
		}
	}
}
