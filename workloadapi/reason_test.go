package workloadapi

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
)

// forged returns a compact JWS with the given header and claims and a
// signature that verifies against nothing.
func forged(t *testing.T, header, claims map[string]any) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	return enc(header) + "." + enc(claims) + "." + base64.RawURLEncoding.EncodeToString(make([]byte, 64))
}

// The audit reason for a refused token is a word from a closed set,
// whatever the token says: the real validator's messages quote the kid (1
// KiB here), which must not reach the trail.
func TestValidateReasonIsClosedSet(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	bundles := jwtbundle.New(td)
	exp := time.Now().Add(time.Hour).Unix()
	claims := map[string]any{"sub": "spiffe://example.org/x", "aud": []string{"svc"}, "exp": exp}
	kid := strings.Repeat("K", 1024)
	sneaky := "token has expired " + kid // a kid that reads like another reason
	for _, tc := range []struct {
		name, token, want string
	}{
		{"1 KiB kid", forged(t, map[string]any{"alg": "ES256", "kid": kid, "typ": "JWT"}, claims), "unknown_key_id"},
		{"kid mimicking a reason", forged(t, map[string]any{"alg": "ES256", "kid": sneaky}, claims), "unknown_key_id"},
		{"no kid", forged(t, map[string]any{"alg": "ES256"}, claims), "missing_key_id"},
		{"other trust domain", forged(t, map[string]any{"alg": "ES256", "kid": "k"}, map[string]any{"sub": "spiffe://" + strings.Repeat("d", 200) + "/x", "exp": exp}), "unknown_trust_domain"},
		{"garbage", "not.a.jwt" + kid, "malformed"},
		{"no subject", forged(t, map[string]any{"alg": "ES256", "kid": "k"}, map[string]any{"exp": exp}), "missing_subject"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := jwtsvid.ParseAndValidate(tc.token, bundles, []string{"svc"})
			if err == nil {
				t.Fatal("forged token validated")
			}
			// As the agent's store and backend wrap it.
			err = fmt.Errorf("%w: %v", ErrInvalidToken, fmt.Errorf("validate JWT-SVID: %w", err))
			got := validateReason(err)
			if got != tc.want {
				t.Errorf("reason %q (from %.80q…), want %q", got, err.Error(), tc.want)
			}
		})
	}
	known := []string{"invalid_token", "internal_error"}
	for _, r := range validateReasons {
		known = append(known, r.reason)
	}
	for _, err := range []error{
		errors.New("validate JWT-SVID: no JWT authority " + kid),
		fmt.Errorf("%w: %s", ErrInvalidToken, kid),
		fmt.Errorf("%w: validate JWT-SVID: jwtsvid: %s", ErrInvalidToken, kid),
		fmt.Errorf("%w: validate JWT-SVID: token has expired", ErrInvalidToken),
	} {
		if r := validateReason(err); !slices.Contains(known, r) || strings.Contains(r, "K") {
			t.Errorf("reason %q for %.60q…", r, err.Error())
		}
	}
}
