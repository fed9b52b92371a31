package agent

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nodeward/nodeward/agent/config"
	"github.com/nodeward/nodeward/agent/policy"
	"github.com/nodeward/nodeward/attestors/selector"
)

const td = "example.org"

// socketDir returns a fresh 0755 directory for a Workload API socket: the
// socket must sit in a directory only the agent's user can write, and
// children running as other uids must be able to reach it.
func socketDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nodeward-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// testConfig builds a config from YAML entries text, through the real decoder.
func testConfig(t testing.TB, entries string) *config.Agent {
	t.Helper()
	dir := socketDir(t)
	text := fmt.Sprintf("trust_domain: %s\nsocket_path: %s\ndata_dir: %s\nadmin_listen: 127.0.0.1:0\naudit_log: %s\n%s",
		td, filepath.Join(dir, "workload.sock"), filepath.Join(t.TempDir(), "data"), filepath.Join(dir, "audit.log"), entries)
	cfg, err := config.Parse(filepath.Join(dir, "agent.yaml"), []byte(text))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, text)
	}
	return cfg
}

type running struct {
	agent *Agent
	addr  string
	cfg   *config.Agent
}

// startAgent runs an agent until the test ends and waits until it serves.
func startAgent(t testing.TB, cfg *config.Agent, opts ...Option) *running {
	t.Helper()
	level := slog.LevelDebug
	if _, bench := t.(*testing.B); bench {
		level = slog.LevelWarn
	}
	a, err := New(cfg, slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: level})), opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("agent did not stop")
		}
		// Keep the audit trail for the suite-wide secret sweep (TestMain).
		if b, err := os.ReadFile(cfg.AuditLog); err == nil {
			transcript.add(b)
		}
	})
	waitFor(t, "agent ready", a.Ready)
	return &running{agent: a, addr: "unix://" + cfg.SocketPath, cfg: cfg}
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	transcript.add(p)
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// selfEntry grants the test process (its uid and binary) an identity; a
// bare uid would be refused as a broad selector when tests run as root.
func selfEntry(id string, extra string) string {
	return fmt.Sprintf("  - spiffe_id: spiffe://%s/%s\n    selectors: [unix:uid:%d, \"unix:path:%s\"]\n%s", td, id, os.Geteuid(), selfExe(), extra)
}

func selfExe() string {
	exe, err := os.Executable()
	if err != nil {
		panic(err)
	}
	if r, err := filepath.EvalSymlinks(exe); err == nil {
		exe = r
	}
	return exe
}

func TestFetchX509SVIDWithGoSPIFFE(t *testing.T) {
	r := startAgent(t, testConfig(t, "entries:\n"+selfEntry("web", "    dns_names: [web.internal]\n    hint: web\n")))
	ctx := ctxT(t)
	xc, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr(r.addr))
	if err != nil {
		t.Fatalf("FetchX509Context: %v", err)
	}
	if len(xc.SVIDs) != 1 {
		t.Fatalf("got %d SVIDs, want 1", len(xc.SVIDs))
	}
	svid := xc.SVIDs[0]
	noteKey(t, svid.PrivateKey)
	if got := svid.ID.String(); got != "spiffe://example.org/web" {
		t.Errorf("SPIFFE ID = %s", got)
	}
	if svid.Hint != "web" {
		t.Errorf("hint = %q", svid.Hint)
	}
	leaf := svid.Certificates[0]
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "web.internal" {
		t.Errorf("DNS names = %v", leaf.DNSNames)
	}
	if leaf.IsCA || leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("leaf IsCA=%v KeyUsage=%v", leaf.IsCA, leaf.KeyUsage)
	}
	// The chain verifies against the bundle the agent serves.
	if _, _, err := x509svid.Verify(svid.Certificates, xc.Bundles); err != nil {
		t.Errorf("verify against served bundle: %v", err)
	}
	bundles, err := workloadapi.FetchX509Bundles(ctx, workloadapi.WithAddr(r.addr))
	if err != nil {
		t.Fatalf("FetchX509Bundles: %v", err)
	}
	b, err := bundles.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString(td))
	if err != nil || len(b.X509Authorities()) != 1 {
		t.Fatalf("bundle: %v", err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, x509bundle.NewSet(b)); err != nil {
		t.Errorf("verify against FetchX509Bundles: %v", err)
	}
}

func TestDenyByDefault(t *testing.T) {
	r := startAgent(t, testConfig(t, "")) // no entries: deny-all
	ctx := ctxT(t)
	c, err := workloadapi.New(ctx, workloadapi.WithAddr(r.addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.FetchX509SVID(ctx)
	wantCode(t, "FetchX509SVID", err, codes.PermissionDenied)
	_, err = c.FetchX509Bundles(ctx)
	wantCode(t, "FetchX509Bundles", err, codes.PermissionDenied)
	_, err = c.FetchJWTBundles(ctx)
	wantCode(t, "FetchJWTBundles", err, codes.PermissionDenied)
	_, err = c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "a"})
	wantCode(t, "FetchJWTSVID", err, codes.PermissionDenied)
}

func wantCode(t *testing.T, what string, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Errorf("%s: code %v (err %v), want %v", what, got, err, want)
	}
}

func TestOtherEntryDoesNotMatch(t *testing.T) {
	// An entry for another uid must not leak to us.
	r := startAgent(t, testConfig(t, fmt.Sprintf("entries:\n  - spiffe_id: spiffe://%s/other\n    selectors: [unix:uid:%d]\n", td, os.Geteuid()+4242)))
	ctx := ctxT(t)
	_, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(r.addr))
	wantCode(t, "FetchX509SVID", err, codes.PermissionDenied)
}

func TestJWTSVIDFetchCacheValidate(t *testing.T) {
	entries := "entries:\n" + selfEntry("api", "    jwt_ttl: 5m\n    hint: api\n") + selfEntry("batch", "    hint: batch\n")
	r := startAgent(t, testConfig(t, entries))
	ctx := ctxT(t)
	c, err := workloadapi.New(ctx, workloadapi.WithAddr(r.addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	svids, err := c.FetchJWTSVIDs(ctx, jwtsvid.Params{Audience: "svc-a", ExtraAudiences: []string{"svc-b"}})
	if err != nil {
		t.Fatalf("FetchJWTSVIDs: %v", err)
	}
	if len(svids) != 2 || svids[0].ID.Path() != "/api" || svids[1].ID.Path() != "/batch" {
		t.Fatalf("got %v", svids)
	}
	for _, s := range svids {
		transcript.noteSecret("JWT-SVID", s.Marshal())
	}
	// Same audience set in another order: served from the cache.
	again, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "svc-b", ExtraAudiences: []string{"svc-a"}})
	if err != nil {
		t.Fatal(err)
	}
	if again.Marshal() != svids[0].Marshal() {
		t.Error("cached audience set did not return the cached token")
	}
	// Ask for one SPIFFE ID only.
	one, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "svc-a", Subject: spiffeid.RequireFromString("spiffe://example.org/batch")})
	if err != nil || one.ID.Path() != "/batch" {
		t.Fatalf("subject filter: %v %v", one, err)
	}
	_, err = c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "svc-a", Subject: spiffeid.RequireFromString("spiffe://example.org/nope")})
	wantCode(t, "FetchJWTSVID other subject", err, codes.PermissionDenied)

	got, err := c.ValidateJWTSVID(ctx, svids[0].Marshal(), "svc-b")
	if err != nil {
		t.Fatalf("ValidateJWTSVID: %v", err)
	}
	if got.ID.String() != "spiffe://example.org/api" || got.Claims["sub"] != "spiffe://example.org/api" {
		t.Errorf("validated %v claims %v", got.ID, got.Claims)
	}
	_, err = c.ValidateJWTSVID(ctx, svids[0].Marshal(), "svc-c")
	wantCode(t, "wrong audience", err, codes.InvalidArgument)
	_, err = c.ValidateJWTSVID(ctx, "garbage.token.here", "svc-a")
	wantCode(t, "garbage", err, codes.InvalidArgument)
	tok := svids[0].Marshal()
	tampered := tok[:len(tok)-4] + "AAAA"
	_, err = c.ValidateJWTSVID(ctx, tampered, "svc-a")
	wantCode(t, "tampered signature", err, codes.InvalidArgument)
	// JWT bundle: a JWKS with the signing key.
	jb, err := c.FetchJWTBundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := jb.GetJWTBundleForTrustDomain(spiffeid.RequireTrustDomainFromString(td))
	if err != nil || len(b.JWTAuthorities()) != 1 {
		t.Fatalf("jwt bundle: %v", err)
	}
	if _, err := jwtsvid.ParseAndValidate(tok, jb, []string{"svc-a"}); err != nil {
		t.Errorf("token does not validate against served JWT bundle: %v", err)
	}
}

func TestBadJWTRequests(t *testing.T) {
	r := startAgent(t, testConfig(t, "entries:\n"+selfEntry("api", "")))
	ctx := ctxT(t)
	c, err := workloadapi.New(ctx, workloadapi.WithAddr(r.addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	many := make([]string, 40)
	for i := range many {
		many[i] = fmt.Sprintf("aud-%d", i)
	}
	tests := []struct {
		name   string
		params jwtsvid.Params
	}{
		{"too many audiences", jwtsvid.Params{Audience: "a", ExtraAudiences: many}},
		{"too long audience", jwtsvid.Params{Audience: strings.Repeat("x", 2000)}},
		{"empty extra audience", jwtsvid.Params{Audience: "a", ExtraAudiences: []string{""}}},
	}
	for _, tt := range tests {
		_, err := c.FetchJWTSVID(ctx, tt.params)
		wantCode(t, tt.name, err, codes.InvalidArgument)
	}
	_, err = c.ValidateJWTSVID(ctx, strings.Repeat("a", 20000), "a")
	wantCode(t, "oversized token", err, codes.InvalidArgument)
	// The agent keeps serving.
	if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "ok"}); err != nil {
		t.Fatalf("agent stopped serving after bad input: %v", err)
	}
}

func TestHintsUniquePerResponse(t *testing.T) {
	// The guardrails refuse such a policy from config; the server must still
	// keep hints unique if the index holds one (it is set directly here).
	r := startAgent(t, testConfig(t, ""))
	var entries []*policy.Entry
	for _, e := range []struct{ path, hint string }{{"/a", "same"}, {"/b", "same"}, {"/c", "other"}} {
		entries = append(entries, &policy.Entry{
			SPIFFEID:  spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString(td), e.path),
			Selectors: []selector.Selector{selector.New("unix", "uid", fmt.Sprint(os.Geteuid()))},
			X509TTL:   time.Hour, JWTTTL: time.Minute, Hint: e.hint,
		})
	}
	ix, err := policy.NewIndex(entries)
	if err != nil {
		t.Fatal(err)
	}
	r.agent.Store().SetIndex(ix)
	xc, err := workloadapi.FetchX509Context(ctxT(t), workloadapi.WithAddr(r.addr))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range xc.SVIDs {
		ids = append(ids, s.ID.Path()+"="+s.Hint)
	}
	if strings.Join(ids, ",") != "/a=same,/c=other" {
		t.Fatalf("SVIDs = %v, want /a=same,/c=other", ids)
	}
}

// watcher records X.509 contexts and errors from a go-spiffe watch.
type watcher struct {
	updates chan *workloadapi.X509Context
	errs    chan error
}

func (w *watcher) OnX509ContextUpdate(c *workloadapi.X509Context) { w.updates <- c }
func (w *watcher) OnX509ContextWatchError(err error) {
	select {
	case w.errs <- err:
	default:
	}
}

func watch(t *testing.T, addr string) *watcher {
	t.Helper()
	w := &watcher{updates: make(chan *workloadapi.X509Context, 16), errs: make(chan error, 16)}
	ctx, cancel := context.WithCancel(context.Background())
	c, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.WatchX509Context(ctx, w)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = c.Close()
	})
	return w
}

func nextUpdate(t *testing.T, w *watcher, within time.Duration) *workloadapi.X509Context {
	t.Helper()
	select {
	case u := <-w.updates:
		return u
	case <-time.After(within):
		t.Fatalf("no X.509 update within %s", within)
		return nil
	}
}

func TestRotationPushesToOpenStream(t *testing.T) {
	r := startAgent(t, testConfig(t, "entries:\n"+selfEntry("short", "    x509_ttl: 3s\n")))
	w := watch(t, r.addr)
	first := nextUpdate(t, w, 5*time.Second)
	got1 := time.Now()
	s1 := first.SVIDs[0].Certificates[0]
	// Rotation happens at 50–75% of the lifetime left at minting (~3 s).
	second := nextUpdate(t, w, 10*time.Second)
	s2 := second.SVIDs[0].Certificates[0]
	if s1.SerialNumber.Cmp(s2.SerialNumber) == 0 {
		t.Fatal("rotation pushed the same certificate")
	}
	if !s2.NotAfter.After(s1.NotAfter) {
		t.Errorf("rotated SVID expires %v, not after %v", s2.NotAfter, s1.NotAfter)
	}
	// NotAfter has one-second precision, hence the slack.
	half := got1.Add(s1.NotAfter.Sub(got1)/2 - time.Second)
	if at := time.Now(); at.Before(half) || at.After(s1.NotAfter) {
		t.Errorf("rotated at %v, outside [about half-life %v, expiry %v]", at, half, s1.NotAfter)
	}
}

func TestReloadUpdatesOpenStreams(t *testing.T) {
	cfg := testConfig(t, "entries:\n"+selfEntry("before", ""))
	r := startAgent(t, cfg)
	w := watch(t, r.addr)
	if u := nextUpdate(t, w, 5*time.Second); u.SVIDs[0].ID.Path() != "/before" {
		t.Fatalf("first = %s", u.SVIDs[0].ID)
	}
	next := *cfg
	next.Entries = testConfig(t, "entries:\n"+selfEntry("after", "")).Entries
	if err := r.agent.Reload(&next); err != nil {
		t.Fatal(err)
	}
	if u := nextUpdate(t, w, 5*time.Second); u.SVIDs[0].ID.Path() != "/after" {
		t.Fatalf("after reload = %s", u.SVIDs[0].ID)
	}
	// Revoke everything: the open stream ends with PermissionDenied.
	none := *cfg
	none.Entries = nil
	start := time.Now()
	if err := r.agent.Reload(&none); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-w.errs:
		wantCode(t, "stream after revocation", err, codes.PermissionDenied)
		// The requirement: open streams learn of a revocation within one second.
		if d := time.Since(start); d > time.Second {
			t.Errorf("time to revoke on an open stream: %v, want under 1s", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("open stream not told of revocation")
	}
}

func TestReloadRejectsBadConfigKeepsServing(t *testing.T) {
	cfg := testConfig(t, "entries:\n"+selfEntry("keep", ""))
	r := startAgent(t, cfg)
	_, err := config.Parse("bad.yaml", []byte("trust_domain: example.org\nentries:\n  - spiffe_id: spiffe://example.org/x\n    selectors: [nope]\n"))
	if err == nil || !strings.Contains(err.Error(), "bad.yaml:4") {
		t.Fatalf("bad config error = %v, want it to name bad.yaml:4", err)
	}
	xc, err := workloadapi.FetchX509Context(ctxT(t), workloadapi.WithAddr(r.addr))
	if err != nil || xc.SVIDs[0].ID.Path() != "/keep" {
		t.Fatalf("after rejected reload: %v %v", xc, err)
	}
}

func TestAdminEndpoints(t *testing.T) {
	r := startAgent(t, testConfig(t, ""))
	base := "http://" + r.agent.AdminAddr()
	for _, p := range []string{"/healthz", "/readyz"} {
		code, body := httpGet(t, base+p)
		if code != 200 {
			t.Errorf("%s = %d %s", p, code, body)
		}
	}
}

func TestLiveSocketIsNotStolen(t *testing.T) {
	cfg := testConfig(t, "")
	startAgent(t, cfg)
	a2, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = a2.Run(ctxT(t))
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second agent on a live socket: %v", err)
	}
}

func TestGuardrailsRefuseAtLoadAndReload(t *testing.T) {
	broad := fmt.Sprintf("entries:\n  - spiffe_id: spiffe://%s/everyone\n    selectors: [unix:gid:0]\n", td)
	if _, err := New(testConfig(t, broad), nil); !errors.Is(err, ErrPolicyRefused) || !strings.Contains(err.Error(), "broad-selectors") {
		t.Fatalf("New with a broad entry: %v", err)
	}
	cfg := testConfig(t, "entries:\n"+selfEntry("keep", ""))
	r := startAgent(t, cfg)
	next := *cfg
	next.Entries = testConfig(t, broad).Entries
	if err := r.agent.Reload(&next); !errors.Is(err, ErrPolicyRefused) {
		t.Fatalf("Reload with a broad entry: %v", err)
	}
	xc, err := workloadapi.FetchX509Context(ctxT(t), workloadapi.WithAddr(r.addr))
	if err != nil || xc.SVIDs[0].ID.Path() != "/keep" {
		t.Fatalf("after a refused reload: %v %v", xc, err)
	}
}

func TestOIDCDiscoveryAndIssuer(t *testing.T) {
	cfg := testConfig(t, "jwt_issuer: https://oidc.example.org\nentries:\n"+selfEntry("api", ""))
	r := startAgent(t, cfg)
	base := "http://" + r.agent.AdminAddr()
	code, body := httpGet(t, base+"/.well-known/openid-configuration")
	var disc map[string]any
	if err := json.Unmarshal([]byte(body), &disc); code != 200 || err != nil {
		t.Fatalf("discovery: %d %v %s", code, err, body)
	}
	if disc["issuer"] != "https://oidc.example.org" || disc["jwks_uri"] != "https://oidc.example.org/keys" {
		t.Errorf("discovery = %v", disc)
	}
	code, body = httpGet(t, base+"/keys")
	var jwks struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.Unmarshal([]byte(body), &jwks); code != 200 || err != nil || len(jwks.Keys) != 1 ||
		jwks.Keys[0]["use"] != "sig" || jwks.Keys[0]["alg"] != "ES256" || jwks.Keys[0]["kid"] == "" {
		t.Fatalf("keys: %d %v %s", code, err, body)
	}
	tok, err := workloadapi.FetchJWTSVID(ctxT(t), jwtsvid.Params{Audience: "idp"}, workloadapi.WithAddr(r.addr))
	if err != nil {
		t.Fatal(err)
	}
	transcript.noteSecret("JWT-SVID", tok.Marshal())
	if tok.Claims["iss"] != "https://oidc.example.org" {
		t.Errorf("iss = %v", tok.Claims["iss"])
	}
}
