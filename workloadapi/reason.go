package workloadapi

import (
	"errors"
	"strings"
)

// validateReasons maps the fixed start of a JWT-SVID validator message (from
// go-spiffe's jwtsvid, behind the store's "validate JWT-SVID: " prefix) to the
// reason recorded in the audit trail.
var validateReasons = []struct{ prefix, reason string }{
	{"token has expired", "expired"},
	{"expected audience", "audience_mismatch"},
	{"no JWT authority", "unknown_key_id"},
	{"token header missing key id", "missing_key_id"},
	{"no bundle found", "unknown_trust_domain"},
	{"unable to parse", "malformed"},
	{"token header type", "bad_type"},
	{"token missing subject", "missing_subject"},
	{"token missing exp", "missing_expiry"},
	{"token has an invalid subject", "invalid_subject"},
	{"unable to get claims", "bad_signature_or_claims"},
}

// validateReason names why ValidateJWTSVID refused a token, from a closed
// set of words. The validator's message quotes what the caller sent (the
// kid, the token's audiences, claim values): attacker-chosen text of any
// length, and a token's content, must never reach the audit trail.
func validateReason(err error) string {
	if !errors.Is(err, ErrInvalidToken) {
		return "internal_error"
	}
	msg := err.Error()
	// Only text after the first known prefix is looked at, and only its
	// start: what precedes it is ours, what follows the start is not.
	const store = "validate JWT-SVID: "
	i := strings.Index(msg, store)
	if i < 0 {
		return "invalid_token"
	}
	msg = strings.TrimPrefix(msg[i+len(store):], "jwtsvid: ")
	for _, r := range validateReasons {
		if strings.HasPrefix(msg, r.prefix) {
			return r.reason
		}
	}
	return "invalid_token"
}
