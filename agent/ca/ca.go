// Package ca is the agent's local certificate authority: an ECDSA P-256 root
// key and self-signed trust-domain root certificate, and a separate P-256
// JWT signing key, all persisted in the data directory and reused across
// restarts. It mints X.509-SVIDs and JWT-SVIDs per the SPIFFE specs.
//
// Security: the data directory is 0700 and key files 0600, written
// atomically; a key file readable by others is refused. Keys never leave
// this package and never appear in errors or logs. Leaves are signed through
// an issuer (certificate + crypto.Signer) so that the root key can later live
// in hardware and sign a short-lived software intermediate instead.
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Errors returned by the CA.
var (
	ErrUnsafeFile = errors.New("file permissions too open")
	ErrBadTTL     = errors.New("ttl must be positive")
	ErrBadID      = errors.New("invalid SPIFFE ID for an SVID")
)

const (
	defaultRootTTL = 5 * 365 * 24 * time.Hour
	backdate       = 10 * time.Second
)

// Config configures LoadOrCreate.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	// Dir is the data directory; created 0700 when missing.
	Dir string
	// Clock returns the current time; nil means time.Now.
	Clock func() time.Time
	// RootTTL is the lifetime of a newly created root (default 5 years). A
	// root past 80% of its life is replaced at load.
	RootTTL time.Duration
	Logger  *slog.Logger
	// JWTIssuer, when set, is put in JWT-SVIDs as "iss" (what an OIDC
	// federated IdP matches against the discovery document).
	JWTIssuer string
}

// issuer signs leaf certificates.
type issuer struct {
	cert   *x509.Certificate
	signer crypto.Signer
}

// CA mints SVIDs for one trust domain. It is safe for concurrent use.
type CA struct {
	td    spiffeid.TrustDomain
	clock func() time.Time

	root   *x509.Certificate
	issuer issuer

	jwtKey    *ecdsa.PrivateKey
	jwtKID    string
	jwtHeader string // base64url of the JOSE header
	jwtIssuer string

	bundleDER []byte
	jwks      []byte
	oidcJWKS  []byte
	bundle    *spiffebundle.Bundle
}

// X509SVID is a freshly minted X.509-SVID.
type X509SVID struct {
	ID           spiffeid.ID
	Certificates []*x509.Certificate // leaf first; the root is not included
	PrivateKey   *ecdsa.PrivateKey
	KeyDER       []byte // PKCS#8 DER of PrivateKey
}

// TrustDomain returns the CA's trust domain.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.td }

// X509Authorities returns the root certificates of the trust domain.
func (c *CA) X509Authorities() []*x509.Certificate { return []*x509.Certificate{c.root} }

// X509BundleDER returns the X.509 bundle as concatenated DER certificates.
func (c *CA) X509BundleDER() []byte { return c.bundleDER }

// JWKS returns the JWT bundle as a JWKS document (keys with use "jwt-svid").
func (c *CA) JWKS() []byte { return c.jwks }

// OIDCJWKS returns the JWT signing keys as a JWKS for OIDC consumers: "use"
// is "sig" and "alg" ES256, since generic JOSE libraries skip keys with use
// "jwt-svid".
func (c *CA) OIDCJWKS() []byte { return c.oidcJWKS }

// JWTIssuer returns the configured "iss" of JWT-SVIDs ("" when none).
func (c *CA) JWTIssuer() string { return c.jwtIssuer }

// Bundle returns the trust domain's bundle with X.509 and JWT authorities.
func (c *CA) Bundle() *spiffebundle.Bundle { return c.bundle }

// JWTKeyID returns the kid of the JWT signing key.
func (c *CA) JWTKeyID() string { return c.jwtKID }

func (c *CA) finish() error {
	c.bundleDER = append([]byte(nil), c.root.Raw...)
	kid, err := keyID(&c.jwtKey.PublicKey)
	if err != nil {
		return err
	}
	c.jwtKID = kid
	hdr, err := json.Marshal(map[string]string{"alg": "ES256", "kid": kid, "typ": "JWT"})
	if err != nil {
		return fmt.Errorf("jwt header: %w", err)
	}
	c.jwtHeader = base64.RawURLEncoding.EncodeToString(hdr)
	pub := &c.jwtKey.PublicKey
	raw, err := pub.Bytes() // uncompressed point: 0x04 || X || Y
	if err != nil {
		return fmt.Errorf("jwt key: %w", err)
	}
	x, y := raw[1:33], raw[33:65]
	c.jwks, err = json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "EC", "crv": "P-256", "use": "jwt-svid", "kid": kid,
		"x": base64.RawURLEncoding.EncodeToString(x), "y": base64.RawURLEncoding.EncodeToString(y),
	}}})
	if err != nil {
		return fmt.Errorf("jwks: %w", err)
	}
	c.oidcJWKS, err = json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
		"x": base64.RawURLEncoding.EncodeToString(x), "y": base64.RawURLEncoding.EncodeToString(y),
	}}})
	if err != nil {
		return fmt.Errorf("jwks: %w", err)
	}
	b := spiffebundle.New(c.td)
	b.AddX509Authority(c.root)
	if err := b.AddJWTAuthority(kid, pub); err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	c.bundle = b
	return nil
}

// keyID is base64url(sha256(SPKI DER))[:32 chars], stable across restarts.
func keyID(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("key id: %w", err)
	}
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:24]), nil
}

func serial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("serial: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil // positive, never zero
}

func skid(pub crypto.PublicKey) []byte {
	der, _ := x509.MarshalPKIXPublicKey(pub)
	sum := sha256.Sum256(der)
	return sum[:20]
}

func newRoot(td spiffeid.TrustDomain, key crypto.Signer, now time.Time, ttl time.Duration) (*x509.Certificate, error) {
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	u, _ := url.Parse(td.IDString())
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "nodeward " + td.Name() + " root", Organization: []string{"nodeward"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{u},
		SubjectKeyId:          skid(key.Public()),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create root certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}

// MintX509SVID mints an X.509-SVID for id with the given DNS SANs and
// lifetime (clamped to the issuer's expiry).
func (c *CA) MintX509SVID(id spiffeid.ID, dnsNames []string, ttl time.Duration) (*X509SVID, error) {
	if ttl <= 0 {
		return nil, ErrBadTTL
	}
	if id.IsZero() || id.Path() == "" || id.TrustDomain() != c.td {
		return nil, fmt.Errorf("%w: %q (need a non-root path in %s)", ErrBadID, id.String(), c.td.Name())
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate SVID key: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	now := c.clock()
	notAfter := now.Add(ttl)
	if notAfter.After(c.issuer.cert.NotAfter) {
		notAfter = c.issuer.cert.NotAfter
	}
	u := id.URL()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{Organization: []string{"SPIFFE"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  []*url.URL{u},
		DNSNames:              dnsNames,
		SubjectKeyId:          skid(&key.PublicKey),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.issuer.cert, &key.PublicKey, c.issuer.signer)
	if err != nil {
		return nil, fmt.Errorf("sign X.509-SVID for %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse minted SVID: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode SVID key: %w", err)
	}
	chain := []*x509.Certificate{leaf}
	if c.issuer.cert != c.root {
		chain = append(chain, c.issuer.cert)
	}
	return &X509SVID{ID: id, Certificates: chain, PrivateKey: key, KeyDER: keyDER}, nil
}

// JWT is a minted JWT-SVID.
type JWT struct {
	Token     string
	ExpiresAt time.Time
	// JTI is the token's unique id: it names the token in the audit trail.
	JTI string
}

// MintJWTSVID mints a JWT-SVID (compact JWS, ES256) for id and audience,
// with claims sub, aud, exp, iat and jti.
func (c *CA) MintJWTSVID(id spiffeid.ID, audience []string, ttl time.Duration) (*JWT, error) {
	if ttl <= 0 {
		return nil, ErrBadTTL
	}
	if id.IsZero() || id.TrustDomain() != c.td {
		return nil, fmt.Errorf("%w: %q", ErrBadID, id.String())
	}
	if len(audience) == 0 {
		return nil, errors.New("mint JWT-SVID: audience required")
	}
	for _, a := range audience {
		if a == "" {
			return nil, errors.New("mint JWT-SVID: empty audience")
		}
	}
	var jtiRaw [16]byte
	if _, err := rand.Read(jtiRaw[:]); err != nil {
		return nil, fmt.Errorf("mint JWT-SVID: jti: %w", err)
	}
	jti := hex.EncodeToString(jtiRaw[:])
	now := c.clock()
	exp := now.Add(ttl).Truncate(time.Second)
	payload, err := json.Marshal(struct {
		Iss string   `json:"iss,omitempty"`
		Sub string   `json:"sub"`
		Aud []string `json:"aud"`
		Exp int64    `json:"exp"`
		Iat int64    `json:"iat"`
		JTI string   `json:"jti"`
	}{c.jwtIssuer, id.String(), audience, exp.Unix(), now.Unix(), jti})
	if err != nil {
		return nil, fmt.Errorf("mint JWT-SVID: %w", err)
	}
	enc := base64.RawURLEncoding
	buf := make([]byte, 0, len(c.jwtHeader)+1+enc.EncodedLen(len(payload))+1+86)
	buf = append(buf, c.jwtHeader...)
	buf = append(buf, '.')
	buf = enc.AppendEncode(buf, payload)
	digest := sha256.Sum256(buf)
	r, s, err := ecdsa.Sign(rand.Reader, c.jwtKey, digest[:])
	if err != nil {
		return nil, fmt.Errorf("sign JWT-SVID: %w", err)
	}
	var sig [64]byte
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	buf = append(buf, '.')
	buf = enc.AppendEncode(buf, sig[:])
	return &JWT{Token: string(buf), ExpiresAt: exp, JTI: jti}, nil
}
