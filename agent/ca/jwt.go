package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// JWT is a minted JWT-SVID.
type JWT struct {
	// Token is the compact JWS (ES256).
	Token string
	// ExpiresAt is the token's "exp", a whole second.
	ExpiresAt time.Time
	// JTI is the token's unique id: it names the token in the audit trail.
	JTI string
}

// jwtClaims are the JWT-SVID claims, in a fixed order.
type jwtClaims struct {
	Iss string   `json:"iss,omitempty"`
	Sub string   `json:"sub"`
	Aud []string `json:"aud"`
	Exp int64    `json:"exp"`
	Iat int64    `json:"iat"`
	JTI string   `json:"jti"`
}

// MintJWTSVID mints a JWT-SVID for id and audience (one or more non-empty
// strings): a compact JWS signed ES256 with header {alg, kid, typ} and
// claims sub, aud, exp, iat, jti (and iss when configured). The lifetime is
// whole seconds, so ttl must be at least one second; exp is now+ttl rounded
// down to the second.
func (c *CA) MintJWTSVID(id spiffeid.ID, audience []string, ttl time.Duration) (*JWT, error) {
	if ttl < time.Second {
		return nil, fmt.Errorf("mint JWT-SVID: %w: %v (at least 1s)", ErrBadTTL, ttl)
	}
	if err := c.checkID(id); err != nil {
		return nil, fmt.Errorf("mint JWT-SVID: %w", err)
	}
	if len(audience) == 0 {
		return nil, fmt.Errorf("mint JWT-SVID: %w: none given", ErrBadAudience)
	}
	for i, a := range audience {
		if a == "" {
			return nil, fmt.Errorf("mint JWT-SVID: %w: member %d is empty", ErrBadAudience, i)
		}
	}
	var jtiRaw [16]byte
	if _, err := rand.Read(jtiRaw[:]); err != nil {
		return nil, fmt.Errorf("mint JWT-SVID: jti: %w", err)
	}
	jti := hex.EncodeToString(jtiRaw[:])
	js := c.jwt.Load()
	now := c.clock()
	exp := now.Add(ttl).Truncate(time.Second)
	if !js.notAfter.IsZero() && exp.After(js.notAfter) {
		// The key is dropped from the bundle at its lifecycle expiry.
		exp = js.notAfter.Truncate(time.Second)
		if exp.Sub(now) < min(c.minLeafLife(), ttl) {
			return nil, fmt.Errorf("mint JWT-SVID for %s: %w (JWT key not after %s)", id, ErrIssuerExpiring, js.notAfter.UTC().Format(time.RFC3339))
		}
	}
	payload, err := json.Marshal(jwtClaims{Iss: c.jwtIssuer, Sub: id.String(), Aud: audience, Exp: exp.Unix(), Iat: now.Unix(), JTI: jti})
	if err != nil {
		return nil, fmt.Errorf("mint JWT-SVID: claims: %w", err)
	}
	token, err := signJWS(js, payload)
	if err != nil {
		return nil, fmt.Errorf("mint JWT-SVID for %s: %w", id, err)
	}
	return &JWT{Token: token, ExpiresAt: exp, JTI: jti}, nil
}

// signJWS signs payload as a compact JWS (ES256, header {alg, kid, typ})
// with go-jose over the active key's crypto.Signer (cryptosigner.Opaque, as
// SPIRE does), so a key held in a device can sign JWT-SVIDs too.
// BENCHMARKS.md ("JWT signing") compares it with the hand-made JWS it
// replaced.
func signJWS(js *jwtSigner, payload []byte) (string, error) {
	obj, err := js.jose.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	token, err := obj.CompactSerialize()
	if err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	return token, nil
}

// newJOSESigner is the go-jose ES256 signer of key (kid, typ JWT).
func newJOSESigner(key crypto.Signer, kid string) (jose.Signer, error) {
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: cryptosigner.Opaque(checkedSigner{key})},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		return nil, fmt.Errorf("jwt signer %s: %w", kid, err)
	}
	return s, nil
}

// checkedSigner refuses a malformed ECDSA signature from its signer (a
// device): go-jose converts it to r||s assuming r and s fit in 32 bytes.
type checkedSigner struct{ crypto.Signer }

func (s checkedSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	der, err := s.Signer.Sign(r, digest, opts)
	if err != nil {
		return nil, err
	}
	var rs struct{ R, S *big.Int }
	rest, err := asn1.Unmarshal(der, &rs)
	if err != nil || len(rest) != 0 || rs.R == nil || rs.S == nil ||
		rs.R.Sign() <= 0 || rs.S.Sign() <= 0 || rs.R.BitLen() > 256 || rs.S.BitLen() > 256 {
		return nil, fmt.Errorf("%w: the signer returned a malformed ECDSA signature", ErrCorruptFile)
	}
	return der, nil
}

// keyID is the base64url (unpadded) of the first 24 bytes of the SHA-256 of
// the key's DER SubjectPublicKeyInfo: stable across restarts.
func keyID(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("key id: %w", err)
	}
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:24]), nil
}

// jwk is one public P-256 key of a JWKS.
type jwk struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg,omitempty"`
}

// jwkOf renders pub as one JWK.
func jwkOf(pub *ecdsa.PublicKey, kid, use, alg string) (jwk, error) {
	raw, err := pub.Bytes() // uncompressed point: 0x04 || X || Y
	if err != nil {
		return jwk{}, fmt.Errorf("jwks: %w", err)
	}
	if len(raw) != 65 {
		return jwk{}, fmt.Errorf("jwks: %w: JWT key is not a P-256 key", ErrCorruptFile)
	}
	enc := base64.RawURLEncoding
	return jwk{Kty: "EC", Crv: "P-256", X: enc.EncodeToString(raw[1:33]), Y: enc.EncodeToString(raw[33:65]), Kid: kid, Use: use, Alg: alg}, nil
}
