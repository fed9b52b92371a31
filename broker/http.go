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

	"github.com/nodeward/nodeward/workloadapi/peercred"
)

// RequestHeader must be "true" on every API request: a browser or an
// SSRF-driven fetch cannot add it.
const RequestHeader = "Nodeward-Request"

type peerKey struct{}

// API is the broker's HTTP front: GET /v1/token.
type API struct {
	tokens    func(upstream string) (Source, []string, bool) // source and default scopes of an upstream
	identity  func(context.Context) (string, error)          // the broker's SPIFFE ID
	allowUIDs []uint32
	allowGIDs []uint32
	log       *slog.Logger
	onRequest func(upstream string, status int, d time.Duration)
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

func (a *API) fail(w http.ResponseWriter, status int, code, desc string) {
	writeJSON(w, status, errorResponse{Error: code, Description: desc})
}

// Handler returns the HTTP handler. Unix-socket connections carry peer
// credentials in the request context (see ConnContext).
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/token", a.serveToken)
	return mux
}

// ConnContext attaches the peer credentials of Unix connections.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if uc, ok := c.(*net.UnixConn); ok {
		if info, err := peercred.Get(uc); err == nil {
			_ = info.Close() // only uid/gid are needed, not the pidfd
			return context.WithValue(ctx, peerKey{}, info)
		}
		return context.WithValue(ctx, peerKey{}, (*peercred.Info)(nil))
	}
	return ctx
}

func (a *API) allowed(r *http.Request) bool {
	v := r.Context().Value(peerKey{})
	if v == nil {
		return true // loopback TCP (listen_tcp): no peer credentials to check
	}
	info, _ := v.(*peercred.Info)
	if info == nil {
		return false
	}
	if len(a.allowUIDs) == 0 && len(a.allowGIDs) == 0 {
		return info.UID == uint32(getuid()) // default: the broker's own user only
	}
	return slices.Contains(a.allowUIDs, info.UID) || slices.Contains(a.allowGIDs, info.GID)
}

func (a *API) serveToken(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
	a.token(sw, r)
	if a.onRequest != nil {
		upstream := r.URL.Query().Get("upstream")
		if _, _, ok := a.tokens(upstream); !ok {
			upstream = "unknown" // never a caller-chosen label value
		}
		a.onRequest(upstream, sw.status, time.Since(start))
	}
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func (a *API) token(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		a.fail(w, http.StatusMethodNotAllowed, "invalid_request", "use GET")
		return
	}
	if r.Header.Get(RequestHeader) != "true" {
		a.fail(w, http.StatusBadRequest, "invalid_request", "the "+RequestHeader+": true header is required")
		return
	}
	if !a.allowed(r) {
		a.fail(w, http.StatusForbidden, "access_denied", "this caller may not use the broker")
		return
	}
	q := r.URL.Query()
	name := q.Get("upstream")
	src, defScopes, ok := a.tokens(name)
	if !ok {
		a.fail(w, http.StatusBadRequest, "invalid_request", "unknown upstream "+strconv.Quote(truncate(name, 64)))
		return
	}
	aud := q.Get("audience")
	if len(aud) > 1024 {
		a.fail(w, http.StatusBadRequest, "invalid_request", "audience longer than 1024 bytes")
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
		a.fail(w, http.StatusBadRequest, "invalid_request", "too many scopes")
		return
	}
	slices.Sort(scopes)
	scopes = slices.Compact(scopes)
	id, err := a.identity(r.Context())
	if err != nil {
		w.Header().Set("Retry-After", "1")
		a.fail(w, http.StatusServiceUnavailable, "temporarily_unavailable", "no identity from the nodeward agent yet")
		a.log.Warn("no JWT-SVID from the agent", "err", err)
		return
	}
	k := Key{Upstream: name, SPIFFEID: id, Audience: aud, Scopes: strings.Join(scopes, " ")}
	tok, err := src.Token(r.Context(), k)
	if err != nil {
		a.writeError(w, name, err)
		return
	}
	writeJSON(w, http.StatusOK, tokenResponse{
		AccessToken: tok.AccessToken,
		TokenType:   tok.TokenType,
		ExpiresIn:   int64(math.Max(0, time.Until(tok.ExpiresAt).Seconds())),
	})
}

func (a *API) writeError(w http.ResponseWriter, upstream string, err error) {
	var un *UnavailableError
	var ue *UpstreamError
	switch {
	case errors.As(err, &un):
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(max(un.RetryAfter, time.Second).Seconds()))))
		a.fail(w, http.StatusServiceUnavailable, "temporarily_unavailable", un.Reason)
	case errors.As(err, &ue) && !ue.Retryable:
		// The IdP refused (invalid_grant, invalid_client...): retrying will not help.
		a.fail(w, http.StatusBadGateway, "upstream_rejected", ue.Error())
	case errors.As(err, &ue):
		ra := max(ue.RetryAfter, time.Second)
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(ra.Seconds()))))
		a.fail(w, http.StatusServiceUnavailable, "temporarily_unavailable", ue.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		w.Header().Set("Retry-After", "1")
		a.fail(w, http.StatusServiceUnavailable, "temporarily_unavailable", "request cancelled or timed out")
	default:
		a.log.Error("token request failed", "upstream", upstream, "err", err)
		a.fail(w, http.StatusInternalServerError, "server_error", "internal error")
	}
}
