package broker

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nodeward/nodeward/internal/audit"
)

// ReopenAudit reopens a file audit_log after log rotation moved it (SIGUSR1);
// when the path fails the checks, the old file is kept and the error says why.
func (b *Broker) ReopenAudit() error {
	if err := b.audit.Reopen(); err != nil {
		return fmt.Errorf("broker audit_log: %w", err)
	}
	return nil
}

// auditLog writes one audit record; a lost one is counted by the audit
// Logger's hooks and logged here (without the record's content).
func (b *Broker) auditLog(r audit.Record) {
	if err := b.audit.Log(r); err != nil {
		b.log.Warn("audit record lost", "event", r.Event, "err", err)
	}
}

// auditKey fills the fields a cache key gives a record.
func (b *Broker) auditKey(r *audit.Record, k Key) {
	r.SPIFFEID, r.Upstream, r.Scope = k.SPIFFEID, k.Upstream, k.Scopes
	if k.Audience != "" {
		r.Audience = []string{k.Audience}
	}
	if u := b.upstreams[k.Upstream]; u != nil {
		r.Endpoint = u.cfg.TokenEndpoint
	}
}

// tokenFields records a token's expiry, issuer (the iss claim when the
// access token is a JWT; not verified, for forensics only) and SHA-256
// fingerprint; never the token.
func tokenFields(r *audit.Record, tok *Token) {
	if tok == nil {
		return
	}
	exp := tok.ExpiresAt.Round(0).UTC()
	r.ExpiresAt = &exp
	sum := sha256.Sum256([]byte(tok.AccessToken))
	r.TokenSHA256 = hex.EncodeToString(sum[:])
	r.Issuer = jwtIssuer(tok.AccessToken)
}

// jwtIssuer returns the iss claim of a JWT-shaped token, or "".
func jwtIssuer(tok string) string {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 || len(parts[1]) > 8<<10 {
		return ""
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return ""
	}
	var c struct {
		Iss string `json:"iss"`
	}
	if json.Unmarshal(payload, &c) != nil {
		return ""
	}
	return c.Iss
}

// auditDecision writes the record of one token request.
func (b *Broker) auditDecision(d *decision) {
	r := audit.Record{Event: "token", Kind: "token", Decision: "allow", Reason: d.reason,
		DurationMS: float64(time.Since(d.start).Microseconds()) / 1000, TraceID: d.traceID, SpanID: d.spanID}
	if d.status != 200 {
		r.Decision = "deny"
	}
	if c := d.caller; c != nil {
		r.Caller = &audit.Caller{PID: c.pid, UID: c.uid, GID: c.gid, Binary: c.binary()}
	}
	if d.keyKnown {
		b.auditKey(&r, d.key)
	}
	tokenFields(&r, d.tok)
	b.auditLog(r)
	if f := b.onToken; f != nil && d.status == 200 && d.keyKnown {
		f(d.key.SPIFFEID)
	}
}

// OnToken makes the broker call f with the SPIFFE ID a token was obtained
// with, for every token it serves (the agent's identity inventory, when
// the broker runs inside the agent). Call it before Serve.
func (b *Broker) OnToken(f func(spiffeID string)) { b.onToken = f }

// errorReason names an upstream failure for the audit trail (a closed set).
func errorReason(err error) string {
	var un *UnavailableError
	var ue *UpstreamError
	var rl *RateLimitedError
	switch {
	case errors.As(err, &rl):
		return "rate_limited"
	case errors.As(err, &un):
		return "upstream_unavailable"
	case errors.Is(err, ErrUnusableToken):
		return "upstream_unusable"
	case errors.As(err, &ue) && !ue.Retryable:
		return "upstream_rejected"
	case errors.As(err, &ue):
		return "upstream_error"
	}
	return "internal_error"
}
