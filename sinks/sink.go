package sinks

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Source is the part of go-spiffe's *workloadapi.Client a sink uses.
type Source interface {
	WatchX509Context(ctx context.Context, w workloadapi.X509ContextWatcher) error
	WatchJWTBundles(ctx context.Context, w workloadapi.JWTBundleWatcher) error
	FetchJWTSVID(ctx context.Context, p jwtsvid.Params) (*jwtsvid.SVID, error)
}

// Sink keeps one SVIDFiles entry's files current.
type Sink struct {
	cfg      SVIDFiles
	log      *slog.Logger
	mode     os.FileMode
	keyMode  os.FileMode
	uid, gid int
	action   *Action

	mu      sync.Mutex        // serializes writes and actions
	written map[string][]byte // last content per path
	revoked bool              // the identity was revoked and not issued again since
	wake    chan struct{}     // closed to make the JWT refreshers fetch now
	writes  atomic.Uint64     // rotations written (files changed, action run)
}

// New validates cfg and returns its sink.
func New(cfg SVIDFiles, log *slog.Logger) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	mode, _ := parseMode(cfg.Mode, 0o644)
	keyMode, _ := parseMode(cfg.KeyMode, 0o600)
	action, err := NewAction(cfg.OnRotate, log)
	if err != nil {
		return nil, err
	}
	s := &Sink{cfg: cfg, log: log, mode: os.FileMode(mode), keyMode: os.FileMode(keyMode),
		uid: -1, gid: -1, action: action, written: map[string][]byte{}, wake: make(chan struct{})}
	if cfg.Owner != nil {
		s.uid = *cfg.Owner
	}
	if cfg.Group != nil {
		s.gid = *cfg.Group
	}
	return s, nil
}

// Rotations counts the times the files changed and the action ran.
func (s *Sink) Rotations() uint64 { return s.writes.Load() }

// Run keeps the files current until ctx ends: it follows the X.509 and JWT
// bundle streams and refreshes each JWT-SVID at half its remaining life.
func (s *Sink) Run(ctx context.Context, src Source) error {
	var wg sync.WaitGroup
	// The X.509 stream also tells of revocation (for the JWT-SVID files too).
	if s.cfg.X509SVID != "" || s.cfg.X509Bundle != "" || len(s.cfg.JWTSVIDs) > 0 {
		wg.Go(func() { s.watch(ctx, "x509", func() error { return src.WatchX509Context(ctx, x509Watcher{s, ctx}) }) })
	}
	if s.cfg.JWTBundle != "" {
		wg.Go(func() {
			s.watch(ctx, "jwt bundle", func() error { return src.WatchJWTBundles(ctx, jwtBundleWatcher{s, ctx}) })
		})
	}
	for _, jf := range s.cfg.JWTSVIDs {
		wg.Go(func() { s.refreshJWT(ctx, src, jf) })
	}
	wg.Wait()
	return nil
}

// watch runs a go-spiffe watch (which retries by itself) until ctx ends,
// restarting it a second after it returns for any other reason.
func (s *Sink) watch(ctx context.Context, what string, f func() error) {
	for {
		err := f()
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("svid file sink: watch ended; restarting", "stream", what, "err", err)
		if !sleep(ctx, time.Second) {
			return
		}
	}
}

type x509Watcher struct {
	s   *Sink
	ctx context.Context
}

func (w x509Watcher) OnX509ContextUpdate(c *workloadapi.X509Context) { w.s.onX509(w.ctx, c) }
func (w x509Watcher) OnX509ContextWatchError(err error) {
	if w.ctx.Err() != nil {
		return
	}
	if isRevoked(err) {
		w.s.revokeX509(w.ctx)
		return
	}
	w.s.log.Warn("svid file sink: X.509 stream error", "err", err)
}

type jwtBundleWatcher struct {
	s   *Sink
	ctx context.Context
}

func (w jwtBundleWatcher) OnJWTBundlesUpdate(set *jwtbundle.Set) { w.s.onJWTBundles(w.ctx, set) }
func (w jwtBundleWatcher) OnJWTBundlesWatchError(err error) {
	if w.ctx.Err() == nil {
		w.s.log.Warn("svid file sink: JWT bundle stream error", "err", err)
	}
}

// pick returns the SVID with the configured hint, or the default one.
func (s *Sink) pick(svids []*x509svid.SVID) *x509svid.SVID {
	if len(svids) == 0 {
		return nil
	}
	if s.cfg.Hint == "" {
		return svids[0]
	}
	for _, sv := range svids {
		if sv.Hint == s.cfg.Hint {
			return sv
		}
	}
	return nil
}

type file struct {
	path string
	data []byte
	mode os.FileMode
}

func (s *Sink) onX509(ctx context.Context, c *workloadapi.X509Context) {
	svid := s.pick(c.SVIDs)
	if svid == nil {
		// The identity this entry follows is gone from the answer: revoked.
		s.log.Warn("svid file sink: no X.509-SVID with the configured hint", "hint", s.cfg.Hint)
		s.revokeX509(ctx)
		return
	}
	s.mu.Lock()
	if s.revoked {
		// Issued again: the JWT-SVID files are fetched now, not at the
		// next refresh.
		s.revoked = false
		s.wakeJWTLocked()
	}
	s.mu.Unlock()
	var files []file
	if s.cfg.X509Bundle != "" {
		b, err := c.Bundles.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
		if err != nil {
			s.log.Warn("svid file sink: no bundle for the SVID's trust domain", "err", err)
			return
		}
		files = append(files, file{s.cfg.X509Bundle, certsPEM(b.X509Authorities()), s.mode})
	}
	if s.cfg.X509SVID != "" {
		der, err := x509.MarshalPKCS8PrivateKey(svid.PrivateKey)
		if err != nil {
			s.log.Error("svid file sink: cannot encode the private key", "err", err)
			return
		}
		// The key goes first: a reader that sees the new certificate finds
		// its key already in place.
		files = append(files, file{s.cfg.X509Key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), s.keyMode},
			file{s.cfg.X509SVID, certsPEM(svid.Certificates), s.mode})
	}
	s.apply(ctx, "x509", files, "spiffe_id", svid.ID.String(), "expires", svid.Certificates[0].NotAfter)
}

func (s *Sink) onJWTBundles(ctx context.Context, set *jwtbundle.Set) {
	bundles := set.Bundles()
	if len(bundles) == 0 {
		return
	}
	// One trust domain's JWKS: ours is the only one the agent serves.
	doc, err := bundles[0].Marshal()
	if err != nil {
		s.log.Error("svid file sink: cannot encode the JWT bundle", "err", err)
		return
	}
	s.apply(ctx, "jwt bundle", []file{{s.cfg.JWTBundle, doc, s.mode}})
}

// refreshJWT keeps one JWT-SVID file current: fetched now, then again at
// half its remaining lifetime; failures retry with capped backoff.
func (s *Sink) refreshJWT(ctx context.Context, src Source, jf JWTFile) {
	backoff := time.Second
	for {
		svid, err := src.FetchJWTSVID(ctx, jwtsvid.Params{Audience: jf.Audience})
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if isRevoked(err) {
				s.revoke(ctx, "jwt", []string{jf.Path}, "audience", jf.Audience)
			}
			s.log.Warn("svid file sink: JWT-SVID fetch failed", "audience", jf.Audience, "err", err)
			if !s.sleepJWT(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, 30*time.Second)
			continue
		}
		backoff = time.Second
		s.apply(ctx, "jwt", []file{{jf.Path, []byte(svid.Marshal() + "\n"), s.keyMode}},
			"audience", jf.Audience, "expires", svid.Expiry)
		if !s.sleepJWT(ctx, max(time.Until(svid.Expiry)/2, time.Second)) {
			return
		}
	}
}

// apply writes the files that changed, each atomically, then runs the
// rotation action once. Nothing changed: nothing is written or run.
func (s *Sink) apply(ctx context.Context, what string, files []file, logAttrs ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	changed := false
	for _, f := range files {
		if old, ok := s.written[f.path]; ok && bytes.Equal(old, f.data) {
			continue
		}
		if err := writeFileAt(f.path, f.data, f.mode, s.uid, s.gid); err != nil {
			s.log.Error("svid file sink: write failed", "path", f.path, "err", err)
			return
		}
		s.written[f.path] = f.data
		changed = true
	}
	if !changed {
		return
	}
	s.log.Info("svid file sink: files written", append([]any{"what", what}, logAttrs...)...)
	s.runAction(ctx, EventRotate)
	s.writes.Add(1)
}

// isRevoked reports whether a Workload API error says the caller has no
// identity any more (PermissionDenied "no identity issued"), as opposed to
// a transient failure (the agent restarting, a broken connection).
func isRevoked(err error) bool {
	st, ok := status.FromError(err)
	return ok && st.Code() == codes.PermissionDenied && strings.Contains(st.Message(), "no identity issued")
}

// revokeX509 removes the files of an identity the agent no longer issues:
// X.509 key first, then certificate and bundle, then the JWT-SVID files.
func (s *Sink) revokeX509(ctx context.Context) {
	var paths []string
	for _, p := range []string{s.cfg.X509Key, s.cfg.X509SVID, s.cfg.X509Bundle} {
		if p != "" {
			paths = append(paths, p)
		}
	}
	for _, jf := range s.cfg.JWTSVIDs {
		paths = append(paths, jf.Path)
	}
	s.mu.Lock()
	s.revoked = true
	s.wakeJWTLocked()
	s.mu.Unlock()
	s.revoke(ctx, "x509", paths)
}

// wakeJWTLocked makes every JWT refresher fetch now; s.mu must be held.
func (s *Sink) wakeJWTLocked() {
	close(s.wake)
	s.wake = make(chan struct{})
}

// sleepJWT waits d, or until ctx ends (false) or the refreshers are woken.
func (s *Sink) sleepJWT(ctx context.Context, d time.Duration) bool {
	s.mu.Lock()
	wake := s.wake
	s.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
	case <-wake:
	}
	return true
}

// revoke removes the files of a revoked identity, each with one unlink
// relative to its checked directory, and runs the action once with
// EventRevoked if anything was there to remove (also files left by an
// earlier run), so a revocation that lasts runs the action once.
func (s *Sink) revoke(ctx context.Context, what string, paths []string, logAttrs ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	removed := false
	for _, p := range paths {
		gone, err := removeFileAt(p)
		if err != nil {
			s.log.Error("svid file sink: remove failed", "path", p, "err", err)
			continue
		}
		delete(s.written, p)
		removed = removed || gone
	}
	if !removed {
		return
	}
	s.log.Warn("svid file sink: identity revoked; files removed", append([]any{"what", what}, logAttrs...)...)
	s.runAction(ctx, EventRevoked)
	s.writes.Add(1)
}

func certsPEM(certs []*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
