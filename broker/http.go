package broker

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/nodeward/nodeward/internal/tracing"
)

// RequestHeader must be "true" on every API request: a browser or an
// SSRF-driven fetch cannot add it.
const RequestHeader = "Nodeward-Request"

// API is the broker's HTTP front: GET /v1/token.
type API struct {
	tokens    func(upstream string) (Source, []string, bool) // source and default scopes of an upstream
	identity  func(context.Context) (string, error)          // the broker's SPIFFE ID
	allowUIDs []uint32
	allowGIDs []uint32
	log       *slog.Logger
	onRequest func(upstream string, status int, d time.Duration)
	// tcpHosts returns the Host values accepted on loopback TCP (the
	// listen address, and localhost with its port); a request naming any
	// other host is refused (DNS rebinding).
	tcpHosts func() []string
	// clock is the wall clock (no monotonic reading) for expires_in.
	clock func() time.Time
	// onDecision hears every token decision (audit trail).
	onDecision func(d *decision)
	// force serves /v1/breaker/force (game day); nil: not served.
	force http.HandlerFunc
	// tracer records a span per request (nil: tracing off).
	tracer trace.Tracer
}

// decision is the outcome of one token request, for the audit trail.
type decision struct {
	caller   *caller
	status   int
	reason   string // closed set: cache, upstream, or why it was refused
	key      Key
	keyKnown bool
	tok      *Token
	start    time.Time
	// traceID and spanID name the request's span (tracing on).
	traceID, spanID string
}

type tokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
}

type errorResponse struct {
	Error       string `json:"error"`
	Description string `json:"error_description"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// fail answers an error; desc must come from a closed set of the broker's
// own messages, never from the IdP or the caller.
func (a *API) fail(w http.ResponseWriter, d *decision, status int, code, desc, reason string) {
	d.status, d.reason = status, reason
	writeJSON(w, status, errorResponse{Error: code, Description: desc})
}

// Handler returns the HTTP handler. Connections carry their caller in the
// request context (see ConnContext).
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/token", a.serveToken)
	if a.force != nil {
		mux.HandleFunc("/v1/breaker/force", a.force)
	}
	return mux
}

func (a *API) allowed(c *caller) bool {
	if c == nil {
		return false // not attributable: refused
	}
	if len(a.allowUIDs) == 0 && len(a.allowGIDs) == 0 {
		return c.uid == uint32(getuid()) // default: the broker's own user only
	}
	return slices.Contains(a.allowUIDs, c.uid) || c.inGroups(a.allowGIDs)
}

// hostAllowed reports whether a loopback TCP request names the broker's
// own address (or localhost with its port) as Host.
func (a *API) hostAllowed(host string) bool {
	if a.tcpHosts == nil {
		return false
	}
	return slices.Contains(a.tcpHosts(), strings.ToLower(host))
}

// tcpHostsFor returns the Host values accepted for a listener bound to addr.
func tcpHostsFor(addr string) []string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil
	}
	return []string{net.JoinHostPort(host, port), "localhost:" + port}
}

func (a *API) now() time.Time {
	if a.clock != nil {
		return a.clock()
	}
	return time.Now().Round(0)
}

func (a *API) serveToken(w http.ResponseWriter, r *http.Request) {
	d := &decision{caller: callerOf(r.Context()), status: http.StatusOK, start: time.Now()}
	var span trace.Span
	if a.tracer != nil {
		r, span = a.startRequest(r)
		d.traceID, d.spanID = tracing.IDs(r.Context())
	}
	a.token(w, r, d)
	if a.onDecision != nil {
		a.onDecision(d)
	}
	if a.onRequest != nil || span != nil {
		upstream := r.URL.Query().Get("upstream")
		if _, _, ok := a.tokens(upstream); !ok {
			upstream = "unknown" // never a caller-chosen label value
		}
		if a.onRequest != nil {
			a.onRequest(upstream, d.status, time.Since(d.start))
		}
		if span != nil {
			endRequest(span, d, upstream)
		}
	}
}

func (a *API) token(w http.ResponseWriter, r *http.Request, d *decision) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		a.fail(w, d, http.StatusMethodNotAllowed, "invalid_request", "use GET", "bad_request")
		return
	}
	if r.Header.Get(RequestHeader) != "true" {
		a.fail(w, d, http.StatusBadRequest, "invalid_request", "the "+RequestHeader+": true header is required", "bad_request")
		return
	}
	if d.caller != nil && d.caller.tcp && !a.hostAllowed(r.Host) {
		a.fail(w, d, http.StatusMisdirectedRequest, "invalid_request", "the Host header does not name this broker", "misdirected_host")
		return
	}
	if !a.allowed(d.caller) {
		a.fail(w, d, http.StatusForbidden, "access_denied", "this caller may not use the broker", "caller_not_allowed")
		return
	}
	q := r.URL.Query()
	name := q.Get("upstream")
	src, defScopes, ok := a.tokens(name)
	if !ok {
		a.fail(w, d, http.StatusBadRequest, "invalid_request", "unknown upstream "+strconv.Quote(truncate(name, 64)), "bad_request")
		return
	}
	aud := q.Get("audience")
	if len(aud) > 1024 {
		a.fail(w, d, http.StatusBadRequest, "invalid_request", "audience longer than 1024 bytes", "bad_request")
		return
	}
	var scopes []string
	for _, s := range q["scope"] {
		scopes = append(scopes, strings.Fields(s)...)
	}
	if len(scopes) == 0 {
		scopes = slices.Clone(defScopes)
	}
	if len(scopes) > 64 {
		a.fail(w, d, http.StatusBadRequest, "invalid_request", "too many scopes", "bad_request")
		return
	}
	slices.Sort(scopes)
	scopes = slices.Compact(scopes)
	id, err := a.identity(r.Context())
	if err != nil {
		w.Header().Set("Retry-After", "1")
		a.fail(w, d, http.StatusServiceUnavailable, "temporarily_unavailable", "no identity from the nodeward agent yet", "no_identity")
		a.log.Warn("no JWT-SVID from the agent", "err", err)
		return
	}
	k := Key{Upstream: name, SPIFFEID: id, Audience: aud, Scopes: strings.Join(scopes, " ")}
	d.key, d.keyKnown = k, true
	fi := &fetchInfo{}
	tok, err := src.Token(context.WithValue(r.Context(), fetchInfoKey{}, fi), k)
	if err != nil {
		a.writeError(w, d, name, err)
		return
	}
	// Re-checked on the wall clock at the moment of serving: never a token
	// at or past its expiry.
	left := tok.ExpiresAt.Round(0).Sub(a.now())
	if left <= 0 {
		w.Header().Set("Retry-After", "1")
		a.fail(w, d, http.StatusServiceUnavailable, "temporarily_unavailable", "no valid token available yet", "expired")
		return
	}
	d.tok, d.reason = tok, "upstream"
	if fi.hit {
		d.reason = "cache"
	}
	writeJSON(w, http.StatusOK, tokenResponse{
		AccessToken: tok.AccessToken,
		TokenType:   tok.TokenType,
		ExpiresIn:   int64(left / time.Second),
	})
}

// fetchInfo tells the API whether the cache answered (audit trail).
type fetchInfo struct{ hit bool }

type fetchInfoKey struct{}

// markHit records a cache hit in ctx's fetchInfo, if any.
func markHit(ctx context.Context) {
	if fi, ok := ctx.Value(fetchInfoKey{}).(*fetchInfo); ok {
		fi.hit = true
	}
}

// rejectedMessages is the closed set of descriptions for an IdP's refusal,
// by its OAuth2 error code: the IdP's own error_description is never
// relayed (it can quote the JWT-SVID the broker presented).
var rejectedMessages = map[string]string{
	"invalid_request":        "the upstream IdP rejected the request as malformed (invalid_request)",
	"invalid_client":         "the upstream IdP did not accept the broker as a client (invalid_client)",
	"invalid_grant":          "the upstream IdP did not accept the broker's JWT-SVID (invalid_grant)",
	"unauthorized_client":    "the broker is not allowed this grant at the upstream IdP (unauthorized_client)",
	"unsupported_grant_type": "the upstream IdP does not support the configured grant (unsupported_grant_type)",
	"invalid_scope":          "the upstream IdP refused the requested scopes (invalid_scope)",
	"invalid_target":         "the upstream IdP refused the requested audience (invalid_target)",
	"access_denied":          "the upstream IdP denied the request (access_denied)",
}

func (a *API) writeError(w http.ResponseWriter, d *decision, upstream string, err error) {
	var un *UnavailableError
	var ue *UpstreamError
	var rl *RateLimitedError
	switch {
	case errors.As(err, &rl):
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(max(rl.RetryAfter, time.Second).Seconds()))))
		a.fail(w, d, http.StatusTooManyRequests, "slow_down", rl.Reason, "rate_limited")
	case errors.As(err, &un):
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(max(un.RetryAfter, time.Second).Seconds()))))
		a.fail(w, d, http.StatusServiceUnavailable, "temporarily_unavailable", un.Reason, "upstream_unavailable")
	case errors.Is(err, ErrUnusableToken):
		a.fail(w, d, http.StatusBadGateway, "upstream_invalid_token", unusableMessage(err), "upstream_unusable")
		a.log.Warn("the upstream IdP answered a token the broker cannot use", "upstream", upstream, "err", err)
	case errors.As(err, &ue) && !ue.Retryable:
		// The IdP refused (invalid_grant, invalid_client...): retrying will not help.
		msg, ok := rejectedMessages[ue.Code]
		if !ok {
			msg = "the upstream IdP refused the request (HTTP " + strconv.Itoa(ue.Status) + ")"
		}
		a.fail(w, d, http.StatusBadGateway, "upstream_rejected", msg, "upstream_rejected")
	case errors.As(err, &ue):
		ra := max(ue.RetryAfter, time.Second)
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(ra.Seconds()))))
		a.fail(w, d, http.StatusServiceUnavailable, "temporarily_unavailable", "the upstream IdP is unavailable or failing; retry later", "upstream_error")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		w.Header().Set("Retry-After", "1")
		a.fail(w, d, http.StatusServiceUnavailable, "temporarily_unavailable", "request cancelled or timed out", "cancelled")
	default:
		a.log.Error("token request failed", "upstream", upstream, "err", err)
		a.fail(w, d, http.StatusInternalServerError, "server_error", "internal error", "internal_error")
	}
}
