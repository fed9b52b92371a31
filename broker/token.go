// Package broker exchanges the workload's JWT-SVIDs for OAuth2 access tokens
// at upstream IdPs and serves them to local apps over HTTP. It is a stack of
// one-method token sources: Cache (LRU, singleflight, jittered background
// refresh) → Breaker (per-upstream circuit breaker, Retry-After) → Upstream
// (RFC 8693 token exchange, RFC 7523 jwt-bearer, client_credentials with a
// JWT client assertion).
//
// Security: tokens and assertions never appear in logs, errors or metrics
// (Token's String and GoString redact them); callers of the Unix socket API
// are identified by peer credentials and must send "Nodeward-Request: true",
// which a browser or an SSRF-driven request cannot add. A still-valid cached
// token is never dropped because of an IdP fault, and a token is never served
// past its expiry minus a safety margin.
package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Key identifies one cached token.
type Key struct {
	Upstream string
	SPIFFEID string
	Audience string
	Scopes   string // space-separated, sorted, deduplicated
}

// String names the key for logs; it holds no secret.
func (k Key) String() string {
	return fmt.Sprintf("upstream=%s spiffe_id=%s audience=%q scopes=%q", k.Upstream, k.SPIFFEID, k.Audience, k.Scopes)
}

// Token is an access token from an upstream IdP.
type Token struct {
	AccessToken string
	TokenType   string
	IssuedAt    time.Time
	ExpiresAt   time.Time
}

// String redacts the token.
func (t *Token) String() string {
	if t == nil {
		return "<nil token>"
	}
	return fmt.Sprintf("token(type=%s, expires=%s, redacted)", t.TokenType, t.ExpiresAt.UTC().Format(time.RFC3339))
}

// GoString redacts the token for %#v.
func (t *Token) GoString() string { return t.String() }

// Source returns a token for a key.
type Source interface {
	Token(ctx context.Context, k Key) (*Token, error)
}

// Sentinel errors.
var (
	// ErrUnavailable: no valid token can be had now (the caller may retry
	// after RetryAfter).
	ErrUnavailable = errors.New("no valid token available")
	// ErrUnknownUpstream: the request names no configured upstream.
	ErrUnknownUpstream = errors.New("unknown upstream")
	// ErrUnusableToken: the IdP answered a token the broker must not cache
	// or serve (a lifetime within the cache's safety margin, or a token
	// type that is not configured).
	ErrUnusableToken = errors.New("unusable token from the upstream IdP")
	// errShortLived and errTokenType tell the two kinds of ErrUnusableToken apart.
	errShortLived = fmt.Errorf("%w: expires_in is within the safety margin", ErrUnusableToken)
	errTokenType  = fmt.Errorf("%w: token_type is not accepted", ErrUnusableToken)
)

// unusableMessage is the caller's description of an ErrUnusableToken.
func unusableMessage(err error) string {
	if errors.Is(err, errTokenType) {
		return "the upstream IdP issued a token of a type the broker does not accept"
	}
	return "the upstream IdP issued a token too short-lived to serve"
}

// RateLimitedError: the caller has used up its upstream calls or keys.
type RateLimitedError struct {
	RetryAfter time.Duration
	Reason     string // the broker's own words
	kind       string // metric label: upstream_calls or keys
}

func (e *RateLimitedError) Error() string {
	return fmt.Sprintf("rate limited: %s (retry after %s)", e.Reason, e.RetryAfter.Round(time.Second))
}

// UnavailableError is ErrUnavailable with a retry hint.
type UnavailableError struct {
	RetryAfter time.Duration
	Reason     string
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("%v: %s (retry after %s)", ErrUnavailable, e.Reason, e.RetryAfter.Round(time.Second))
}

// Unwrap makes errors.Is(err, ErrUnavailable) hold.
func (e *UnavailableError) Unwrap() error { return ErrUnavailable }

// UpstreamError is a failed token request to an IdP. Retryable errors
// (timeouts, connection errors, 5xx, 429, garbage answers) count against the
// circuit breaker; the others (a 4xx such as invalid_grant) are the caller's
// problem and do not.
type UpstreamError struct {
	Upstream    string
	Status      int    // HTTP status, 0 for transport errors
	Code        string // OAuth2 "error", when the IdP sent one
	Description string // OAuth2 "error_description" (the IdP's words; never a token)
	Retryable   bool
	RetryAfter  time.Duration
	Err         error
}

func (e *UpstreamError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "upstream %s", e.Upstream)
	if e.Status != 0 {
		fmt.Fprintf(&b, ": HTTP %d", e.Status)
	}
	if e.Code != "" {
		fmt.Fprintf(&b, ": %s", e.Code)
	}
	if e.Description != "" {
		fmt.Fprintf(&b, ": %s", e.Description)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	return b.String()
}

func (e *UpstreamError) Unwrap() error { return e.Err }

// retryable reports whether err should count against the breaker and be
// retried with backoff.
func retryable(err error) bool {
	var ue *UpstreamError
	if errors.As(err, &ue) {
		return ue.Retryable
	}
	var rl *RateLimitedError
	if errors.As(err, &rl) {
		return false
	}
	return !errors.Is(err, ErrUnknownUpstream) && !errors.Is(err, context.Canceled)
}

// retryAfter returns the IdP's Retry-After hint carried by err, if any.
func retryAfter(err error) time.Duration {
	var ue *UpstreamError
	if errors.As(err, &ue) {
		return ue.RetryAfter
	}
	var un *UnavailableError
	if errors.As(err, &un) {
		return un.RetryAfter
	}
	var rl *RateLimitedError
	if errors.As(err, &rl) {
		return rl.RetryAfter
	}
	return 0
}
