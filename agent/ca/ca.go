// Package ca is the agent's local certificate authority: an ECDSA P-256 root
// key and self-signed trust-domain root certificate, and a separate P-256
// JWT signing key, all persisted in the data directory and reused across
// restarts. It mints X.509-SVIDs and JWT-SVIDs per the SPIFFE specs.
//
// Security assumptions:
//   - The data directory is trusted: it is created 0700 and refused when
//     group or others can write to it. Key files are written 0600
//     atomically, and a key file that anyone but its owner can access is
//     refused rather than silently tightened.
//   - Keys never leave this package: there is no accessor for a signer, and
//     key bytes never appear in errors or logs (errors name the file only).
//   - Leaves are signed through an issuer (certificate + crypto.Signer), so
//     the root key can later live in hardware and sign a short-lived
//     software intermediate instead, without changing callers.
//   - A CA is safe for concurrent use; only its issuer changes after
//     LoadOrCreate (an intermediate rotation swaps it atomically).
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Config configures LoadOrCreate.
type Config struct {
	// TrustDomain is the trust domain the CA issues for (required).
	TrustDomain spiffeid.TrustDomain
	// Dir is the data directory (required); created 0700 when missing.
	Dir string
	// Clock returns the current time; nil means time.Now.
	Clock func() time.Time
	// RootTTL is the lifetime of a newly created root; zero means 5 years.
	// A stored root past 80% of its life is replaced (same key) at load.
	RootTTL time.Duration
	// Logger receives lifecycle events (keys and roots created or
	// replaced); nil discards them.
	Logger *slog.Logger
	// JWTIssuer, when set, is put in JWT-SVIDs as "iss" (what an OIDC
	// federated IdP matches against the discovery document).
	JWTIssuer string
	// RootSigner, when set, is the root key, held outside the data
	// directory (a non-exportable TPM key): no ca_key.pem is used, the root
	// certificate is kept in TPMRootCertFile, and the root only signs a
	// short-lived software intermediate that mints SVIDs, so the request
	// path never waits on the key's device. See RotateIntermediate.
	RootSigner crypto.Signer
	// IntermediateTTL is the intermediate's lifetime with RootSigner; zero
	// means 24h. Rotate it at half its life (NextRotation).
	IntermediateTTL time.Duration
}

// issuer signs leaf certificates: today the root itself, later a software
// intermediate certified by a hardware-held root.
type issuer struct {
	cert     *x509.Certificate
	signer   crypto.Signer
	rotateAt time.Time // when to replace an intermediate (zero for the root)
}

// CA mints SVIDs for one trust domain. It is safe for concurrent use.
type CA struct {
	td    spiffeid.TrustDomain
	clock func() time.Time

	root   *x509.Certificate
	issuer atomic.Pointer[issuer]

	rootSigner      crypto.Signer // set when the root key is external
	intermediateTTL time.Duration

	jwtKey    *ecdsa.PrivateKey
	jwtKID    string
	jwtHeader string // base64url of the JOSE header, precomputed
	jwtIssuer string

	bundleDER []byte
	jwks      []byte
	oidcJWKS  []byte
	bundle    *spiffebundle.Bundle
}

// X509SVID is a freshly minted X.509-SVID.
type X509SVID struct {
	ID           spiffeid.ID
	Certificates []*x509.Certificate // leaf first, then intermediates; the root is not included
	PrivateKey   *ecdsa.PrivateKey
	KeyDER       []byte // PKCS#8 DER of PrivateKey
}

// TrustDomain returns the CA's trust domain.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.td }

// X509Authorities returns the root certificates of the trust domain. The
// slice is fresh; the certificates are shared and must not be modified.
func (c *CA) X509Authorities() []*x509.Certificate { return []*x509.Certificate{c.root} }

// X509BundleDER returns the X.509 bundle as concatenated DER certificates
// (the Workload API's bundle format). The caller must not modify it.
func (c *CA) X509BundleDER() []byte { return c.bundleDER }

// JWKS returns the JWT bundle as a JWKS document (keys with use
// "jwt-svid"). The caller must not modify it.
func (c *CA) JWKS() []byte { return c.jwks }

// OIDCJWKS returns the JWT signing keys as a JWKS for OIDC consumers: "use"
// is "sig" and "alg" ES256, since generic JOSE libraries skip keys with use
// "jwt-svid". The caller must not modify it.
func (c *CA) OIDCJWKS() []byte { return c.oidcJWKS }

// JWTIssuer returns the configured "iss" of JWT-SVIDs ("" when none).
func (c *CA) JWTIssuer() string { return c.jwtIssuer }

// Bundle returns the trust domain's bundle with X.509 and JWT authorities,
// for validating SVIDs with go-spiffe. The caller must not modify it.
func (c *CA) Bundle() *spiffebundle.Bundle { return c.bundle }

// JWTKeyID returns the kid of the JWT signing key.
func (c *CA) JWTKeyID() string { return c.jwtKID }

// finish precomputes everything derived from the keys and the root: the
// bundle forms and the JWT header.
func (c *CA) finish() error {
	c.bundleDER = append([]byte(nil), c.root.Raw...)
	pub := &c.jwtKey.PublicKey
	kid, err := keyID(pub)
	if err != nil {
		return err
	}
	c.jwtKID = kid
	if c.jwtHeader, err = jwtHeader(kid); err != nil {
		return err
	}
	if c.jwks, err = jwks(pub, kid, "jwt-svid", ""); err != nil {
		return err
	}
	if c.oidcJWKS, err = jwks(pub, kid, "sig", "ES256"); err != nil {
		return err
	}
	b := spiffebundle.New(c.td)
	b.AddX509Authority(c.root)
	if err := b.AddJWTAuthority(kid, pub); err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	c.bundle = b
	return nil
}
