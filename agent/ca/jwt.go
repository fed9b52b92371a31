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
	"math/big"
	"time"

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

// signJWS returns header.payload.signature with the precomputed header and
// an ES256 signature: r and s as fixed 32-byte big-endian integers (RFC 7518
// section 3.4), not ASN.1.
//
// The signature goes through a crypto.Signer (an ASN.1 ECDSA signature,
// converted), so a key held in a device can sign JWT-SVIDs too.
func signJWS(js *jwtSigner, payload []byte) (string, error) {
	enc := base64.RawURLEncoding
	buf := make([]byte, 0, len(js.header)+1+enc.EncodedLen(len(payload))+1+enc.EncodedLen(64))
	buf = append(buf, js.header...)
	buf = append(buf, '.')
	buf = enc.AppendEncode(buf, payload)
	digest := sha256.Sum256(buf)
	der, err := js.signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	var rs struct{ R, S *big.Int }
	rest, err := asn1.Unmarshal(der, &rs)
	if err != nil || len(rest) != 0 || rs.R == nil || rs.S == nil ||
		rs.R.Sign() <= 0 || rs.S.Sign() <= 0 || rs.R.BitLen() > 256 || rs.S.BitLen() > 256 {
		return "", fmt.Errorf("sign: %w: the signer returned a malformed ECDSA signature", ErrCorruptFile)
	}
	var sig [64]byte
	rs.R.FillBytes(sig[:32])
	rs.S.FillBytes(sig[32:])
	buf = append(buf, '.')
	buf = enc.AppendEncode(buf, sig[:])
	return string(buf), nil
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

// jwtHeader returns the base64url JOSE header for kid.
func jwtHeader(kid string) (string, error) {
	hdr, err := json.Marshal(struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}{"ES256", kid, "JWT"})
	if err != nil {
		return "", fmt.Errorf("jwt header: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(hdr), nil
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
