package broker

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodeward/nodeward/internal/peercred"
)

// serveAPI serves api on a real Unix socket and returns a client for it.
func serveAPI(t *testing.T, api *API) *http.Client {
	t.Helper()
	dir, err := os.MkdirTemp("", "broker-api-")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o755)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	sock := filepath.Join(dir, "broker.sock")
	l, err := peercred.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: api.Handler(), ConnContext: ConnContext, ReadHeaderTimeout: time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
}

func get(t *testing.T, c *http.Client, query string, header bool) (int, http.Header, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://broker/v1/token?"+query, nil)
	if header {
		req.Header.Set(RequestHeader, "true")
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("body %q: %v", b, err)
	}
	return resp.StatusCode, resp.Header, m
}

// errSource is a test double of the token source behind the API.
type errSource struct{ err error }

func (e errSource) Token(context.Context, Key) (*Token, error) { return nil, e.err }

func TestTokenAPI(t *testing.T) {
	clk := &fakeClock{now: time.Now()}
	src := &scriptedSource{clock: clk, life: time.Hour}
	var lastKey Key
	sources := map[string]Source{
		"corp":    sourceFunc(func(ctx context.Context, k Key) (*Token, error) { lastKey = k; return src.Token(ctx, k) }),
		"down":    errSource{&UnavailableError{RetryAfter: 12 * time.Second, Reason: "circuit breaker for upstream down is open"}},
		"refused": errSource{&UpstreamError{Upstream: "refused", Status: 400, Code: "invalid_grant"}},
	}
	api := &API{
		tokens: func(name string) (Source, []string, bool) {
			s, ok := sources[name]
			return s, []string{"read"}, ok
		},
		identity: func(context.Context) (string, error) { return "spiffe://example.org/broker", nil },
		log:      slog.New(slog.DiscardHandler),
	}
	c := serveAPI(t, api)

	code, _, body := get(t, c, "upstream=corp&audience=api", false)
	if code != 400 || body["error"] != "invalid_request" || !strings.Contains(body["error_description"].(string), RequestHeader) {
		t.Errorf("without header: %d %v", code, body)
	}
	code, _, body = get(t, c, "upstream=corp&audience=api&scope=write+read&scope=admin", true)
	if code != 200 || body["token_type"] != "Bearer" || body["access_token"] == "" || body["expires_in"].(float64) < 3590 {
		t.Fatalf("token: %d %v", code, body)
	}
	if lastKey.Scopes != "admin read write" || lastKey.Audience != "api" || lastKey.SPIFFEID != "spiffe://example.org/broker" {
		t.Errorf("key = %+v", lastKey)
	}
	get(t, c, "upstream=corp", true)
	if lastKey.Scopes != "read" {
		t.Errorf("default scopes: %+v", lastKey)
	}
	code, _, body = get(t, c, "upstream=nope", true)
	if code != 400 || body["error"] != "invalid_request" {
		t.Errorf("unknown upstream: %d %v", code, body)
	}
	code, hdr, body := get(t, c, "upstream=down", true)
	if code != 503 || hdr.Get("Retry-After") != "12" || body["error"] != "temporarily_unavailable" {
		t.Errorf("breaker open: %d %v %v", code, hdr, body)
	}
	code, _, body = get(t, c, "upstream=refused", true)
	if code != 502 || body["error"] != "upstream_rejected" {
		t.Errorf("IdP refused: %d %v", code, body)
	}

	// Peer credentials: a caller whose uid is not allowed gets 403.
	api.allowUIDs = []uint32{uint32(os.Geteuid()) + 1}
	code, _, body = get(t, c, "upstream=corp", true)
	if code != 403 || body["error"] != "access_denied" {
		t.Errorf("disallowed uid: %d %v", code, body)
	}
	api.allowUIDs = nil
	api.allowGIDs = []uint32{uint32(os.Getegid())}
	if code, _, _ = get(t, c, "upstream=corp", true); code != 200 {
		t.Errorf("allowed gid: %d", code)
	}
}

type sourceFunc func(context.Context, Key) (*Token, error)

func (f sourceFunc) Token(ctx context.Context, k Key) (*Token, error) { return f(ctx, k) }
