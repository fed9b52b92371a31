package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Grant types.
const (
	GrantTokenExchange   = "token-exchange"   // RFC 8693
	GrantJWTBearer       = "jwt-bearer"       // RFC 7523 §2.1
	GrantClientAssertion = "client-assertion" // client_credentials with RFC 7523 §2.2 client authentication

	grantTypeTokenExchange = "urn:ietf:params:oauth:grant-type:token-exchange"
	grantTypeJWTBearer     = "urn:ietf:params:oauth:grant-type:jwt-bearer"
	tokenTypeJWT           = "urn:ietf:params:oauth:token-type:jwt"
	tokenTypeAccessToken   = "urn:ietf:params:oauth:token-type:access_token"
	clientAssertionJWT     = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

	maxResponse  = 1 << 20
	maxExpiresIn = 366 * 24 * 3600
)

// SVIDFetcher returns a JWT-SVID of the broker's identity for an audience.
type SVIDFetcher interface {
	FetchJWTSVID(ctx context.Context, audience string) (token, spiffeID string, err error)
}

// UpstreamConfig configures one IdP.
type UpstreamConfig struct {
	Name          string
	TokenEndpoint string
	Grant         string
	ClientID      string
	SVIDAudience  string // aud of the JWT-SVID presented; default TokenEndpoint
	Scopes        []string
	CAFile        string
	Timeout       time.Duration
	// TokenTypes are the accepted token_type values (case-insensitive);
	// default [Bearer].
	TokenTypes []string
	// MinLifetime: an answer whose expires_in is not longer than this is
	// unusable (the cache's safety margin); default 10s.
	MinLifetime time.Duration
	// MaxRetryAfter caps the IdP's Retry-After; default 60s.
	MaxRetryAfter time.Duration
}

// Upstream requests tokens from one IdP. It implements Source.
type Upstream struct {
	cfg   UpstreamConfig
	http  *http.Client
	svids SVIDFetcher
	clock func() time.Time
}

// NewUpstream validates cfg and returns an Upstream.
func NewUpstream(cfg UpstreamConfig, svids SVIDFetcher, clock func() time.Time) (*Upstream, error) {
	u, err := url.Parse(cfg.TokenEndpoint)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("upstream %s: token_endpoint %q is not an http(s) URL", cfg.Name, cfg.TokenEndpoint)
	}
	switch cfg.Grant {
	case GrantTokenExchange, GrantJWTBearer:
	case GrantClientAssertion:
		if cfg.ClientID == "" {
			return nil, fmt.Errorf("upstream %s: grant client-assertion needs client_id", cfg.Name)
		}
	default:
		return nil, fmt.Errorf("upstream %s: grant %q (want token-exchange, jwt-bearer or client-assertion)", cfg.Name, cfg.Grant)
	}
	if cfg.SVIDAudience == "" {
		cfg.SVIDAudience = cfg.TokenEndpoint
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if len(cfg.TokenTypes) == 0 {
		cfg.TokenTypes = []string{"Bearer"}
	}
	if cfg.MinLifetime <= 0 {
		cfg.MinLifetime = 10 * time.Second
	}
	if cfg.MaxRetryAfter <= 0 {
		cfg.MaxRetryAfter = DefaultMaxRetryAfter
	}
	if clock == nil {
		clock = wallClock
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil // the IdP is reached directly, never through an environment proxy
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: ca_file: %w", cfg.Name, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("upstream %s: ca_file %s holds no PEM certificate", cfg.Name, cfg.CAFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &Upstream{
		cfg:   cfg,
		http:  &http.Client{Transport: tr, Timeout: cfg.Timeout, CheckRedirect: noRedirects},
		svids: svids,
		clock: clock,
	}, nil
}

func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// Name returns the upstream's name.
func (u *Upstream) Name() string { return u.cfg.Name }

// Scopes returns the default scopes.
func (u *Upstream) Scopes() []string { return u.cfg.Scopes }

// Token fetches a JWT-SVID for the IdP and exchanges it for an access token.
func (u *Upstream) Token(ctx context.Context, k Key) (*Token, error) {
	svid, _, err := u.svids.FetchJWTSVID(ctx, u.cfg.SVIDAudience)
	if err != nil {
		// The agent is local; failing to get an SVID is retryable.
		return nil, &UpstreamError{Upstream: u.cfg.Name, Retryable: true, Err: fmt.Errorf("fetch JWT-SVID from the agent: %w", err)}
	}
	form := url.Values{}
	switch u.cfg.Grant {
	case GrantTokenExchange:
		form.Set("grant_type", grantTypeTokenExchange)
		form.Set("subject_token", svid)
		form.Set("subject_token_type", tokenTypeJWT)
		form.Set("requested_token_type", tokenTypeAccessToken)
	case GrantJWTBearer:
		form.Set("grant_type", grantTypeJWTBearer)
		form.Set("assertion", svid)
	case GrantClientAssertion:
		form.Set("grant_type", "client_credentials")
		form.Set("client_assertion_type", clientAssertionJWT)
		form.Set("client_assertion", svid)
	}
	if u.cfg.ClientID != "" {
		form.Set("client_id", u.cfg.ClientID)
	}
	if k.Audience != "" {
		form.Set("audience", k.Audience)
	}
	if k.Scopes != "" {
		form.Set("scope", k.Scopes)
	}
	ctx, cancel := context.WithTimeout(ctx, u.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.cfg.TokenEndpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, &UpstreamError{Upstream: u.cfg.Name, Err: err}
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	sent := u.clock()
	resp, err := u.http.Do(req)
	if err != nil {
		// Transport errors (refused, reset, timeout) are retryable. The URL
		// error holds the endpoint, never the form.
		return nil, &UpstreamError{Upstream: u.cfg.Name, Retryable: true, Err: redactURLError(err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return nil, &UpstreamError{Upstream: u.cfg.Name, Status: resp.StatusCode, Retryable: true, Err: fmt.Errorf("read response: %w", err)}
	}
	if len(body) > maxResponse {
		return nil, &UpstreamError{Upstream: u.cfg.Name, Status: resp.StatusCode, Retryable: true, Err: errors.New("response larger than 1 MiB")}
	}
	if resp.StatusCode != http.StatusOK {
		return nil, u.errorResponse(resp, body, svid)
	}
	return u.parseToken(resp, body, sent)
}

// redactURLError keeps the operation and the cause of a *url.Error.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", ue.Op, ue.Err)
	}
	return err
}

// DefaultMaxRetryAfter caps an IdP's Retry-After unless configured.
const DefaultMaxRetryAfter = 60 * time.Second

// wallClock is time.Now without its monotonic reading: expiry decisions
// follow the wall clock, which keeps running through a suspend or VM pause.
func wallClock() time.Time { return time.Now().Round(0) }

// jwtLike finds JWT-shaped text (base64url JSON header) in an IdP's words.
var jwtLike = regexp.MustCompile(`eyJ[A-Za-z0-9_-]*`)

// sanitizeDescription keeps an IdP's error_description fit for logs: the
// assertion the broker sent and anything JWT-shaped are cut out.
func sanitizeDescription(desc, svid string) string {
	if svid != "" {
		desc = strings.ReplaceAll(desc, svid, "[redacted]")
		if h, _, ok := strings.Cut(svid, "."); ok && len(h) > 8 {
			desc = strings.ReplaceAll(desc, h, "[redacted]")
		}
	}
	return jwtLike.ReplaceAllString(desc, "[redacted]")
}

func (u *Upstream) errorResponse(resp *http.Response, body []byte, svid string) error {
	e := &UpstreamError{Upstream: u.cfg.Name, Status: resp.StatusCode}
	var oe struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	if json.Unmarshal(body, &oe) == nil {
		e.Code = truncate(sanitizeDescription(oe.Error, svid), 64)
		e.Description = truncate(sanitizeDescription(oe.Description, svid), 256)
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests, resp.StatusCode >= 500:
		e.Retryable = true
		e.RetryAfter = min(parseRetryAfter(resp.Header.Get("Retry-After"), u.clock()), u.cfg.MaxRetryAfter)
	case resp.StatusCode >= 400 && resp.StatusCode < 500:
		e.Retryable = false
	default: // 1xx, 3xx: not what a token endpoint answers
		e.Retryable = true
		e.Err = errors.New("unexpected status")
	}
	return e
}

func (u *Upstream) parseToken(resp *http.Response, body []byte, sent time.Time) (*Token, error) {
	garbage := func(why string) error {
		return &UpstreamError{Upstream: u.cfg.Name, Status: resp.StatusCode, Retryable: true, Err: errors.New("invalid token response: " + why)}
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return nil, garbage("content type is not application/json")
	}
	var tr struct {
		AccessToken string          `json:"access_token"`
		TokenType   string          `json:"token_type"`
		ExpiresIn   json.RawMessage `json:"expires_in"`
	}
	if err := json.Unmarshal(body, &tr); err != nil {
		return nil, garbage("not a JSON object")
	}
	if tr.AccessToken == "" || len(tr.AccessToken) > 64<<10 {
		return nil, garbage("access_token missing or too long")
	}
	if tr.TokenType == "" {
		return nil, garbage("token_type missing")
	}
	if !slices.ContainsFunc(u.cfg.TokenTypes, func(t string) bool { return strings.EqualFold(t, tr.TokenType) }) {
		return nil, &UpstreamError{Upstream: u.cfg.Name, Status: resp.StatusCode, Err: fmt.Errorf("%w (%q)", errTokenType, truncate(tr.TokenType, 32))}
	}
	// RFC 6749 says a number; some IdPs send a string.
	n, err := strconv.ParseInt(strings.Trim(string(tr.ExpiresIn), `"`), 10, 64)
	if err != nil || n <= 0 || n > maxExpiresIn {
		return nil, garbage("expires_in missing or out of range")
	}
	if life := time.Duration(n) * time.Second; life <= u.cfg.MinLifetime {
		return nil, &UpstreamError{Upstream: u.cfg.Name, Status: resp.StatusCode, Err: fmt.Errorf("%w (%s <= %s)", errShortLived, life, u.cfg.MinLifetime)}
	}
	return &Token{AccessToken: tr.AccessToken, TokenType: tr.TokenType, IssuedAt: sent, ExpiresAt: sent.Add(time.Duration(n) * time.Second)}, nil
}

// parseRetryAfter reads delta-seconds or an HTTP date, capped at one hour.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	var d time.Duration
	if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 {
		d = time.Duration(n) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), time.Hour)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
