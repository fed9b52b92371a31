// Package ca is the agent's local certificate authority: ECDSA P-256 root
// keys with self-signed trust-domain root certificates, and separate P-256
// JWT signing keys, all persisted in the data directory. With Config.KeyTTL
// and JWTKeyTTL each key goes prepared -> active -> retired (lifecycle.go,
// docs/keys.md) and the published keys form one atomic BundleSnapshot;
// without them one root and one JWT key are kept for good. It mints
// X.509-SVIDs and JWT-SVIDs per the SPIFFE specs, always with the active
// keys.
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
//   - A CA is safe for concurrent use; minting reads the active signers
//     and the snapshot through atomic pointers, swapped by the lifecycle
//     (and by an intermediate rotation) only after the new keys are on disk.
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
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
	// TPMKeys, when set instead of RootSigner, is the TPM holding the root
	// keys: the CA loads (or at first creates) the root at TPMHandle, and
	// RotateTPMRoot replaces it by a new TPM key at the other of the two
	// handles TPMHandle and TPMHandle+1, published, activated and retired
	// like a file-held root (tpmroot.go). The roots are tracked in
	// JournalFile.
	TPMKeys TPMKeys
	// TPMHandle is the first of the two persistent handles of TPMKeys'
	// root keys.
	TPMHandle uint32
	// IntermediateTTL is the intermediate's lifetime with RootSigner; zero
	// means 24h. Rotate it at half its life (NextRotation).
	IntermediateTTL time.Duration
	// KeyTTL, when set, is the life of each file-held root: the keys go
	// prepared -> active -> retired (see Run and docs/keys.md), tracked in
	// JournalFile. Zero keeps one root for good (RootTTL, renewed for the
	// same key). Ignored for the TPM-held root.
	KeyTTL time.Duration
	// JWTKeyTTL, when set, is the life of each JWT signing key, rotated
	// like the roots. Zero keeps one JWT key for good.
	JWTKeyTTL time.Duration
	// OnEvent, when set, receives every lifecycle step (prepare, activate,
	// retire, drop, taint). It is called with the CA's lifecycle lock held
	// and must not block or call back into the CA.
	OnEvent func(KeyEvent)
	// TickInterval is how often Run checks the clock and the request
	// file; zero means 1s.
	TickInterval time.Duration
}

// issuer signs leaf certificates: today the root itself, later a software
// intermediate certified by a hardware-held root.
type issuer struct {
	cert     *x509.Certificate
	signer   crypto.Signer
	rotateAt time.Time // when to replace an intermediate (zero for the root)
	// notAfter bounds every leaf: the certificate's NotAfter, or earlier
	// for a migrated long-lived root (its lifecycle expiry).
	notAfter     time.Time
	intermediate bool // cert goes into the SVID chain
}

// jwtSigner is the active JWT signing key.
type jwtSigner struct {
	signer   crypto.Signer
	kid      string
	jose     jose.Signer // ES256 over signer, header {alg, kid, typ}
	notAfter time.Time   // JWT-SVIDs expire no later (zero: unbounded)
}

// CA mints SVIDs for one trust domain. It is safe for concurrent use.
type CA struct {
	td    spiffeid.TrustDomain
	clock func() time.Time
	log   *slog.Logger

	// root is the TPM-held root's certificate (with rootSigner); nil for
	// file-held keys, whose roots are in the key set.
	root   *x509.Certificate
	issuer atomic.Pointer[issuer]
	jwt    atomic.Pointer[jwtSigner]
	set    atomic.Pointer[keySet]

	rootSigner      crypto.Signer // the active external root key (c.mu and tpmMu to change)
	intermediateTTL time.Duration
	// external: the root key is held outside the data dir (RootSigner or
	// TPMKeys); set at load, never changed.
	external bool
	// TPM-held roots (tpmroot.go). tpmMu serialises every use of a TPM
	// root key (intermediate signatures, TPM root rotation steps); it is
	// taken before mu.
	tpmMu    sync.Mutex
	tpmKeys  TPMKeys
	tpmBase  uint32
	tpmEvict []uint32 // persistent handles to evict (journaled)
	rootTTL  time.Duration

	jwtIssuer string

	// Key lifecycle (lifecycle.go); mu guards auths and the journal.
	mu        sync.Mutex
	dir       string
	x509TTL   time.Duration // zero: the X.509 root does not rotate
	jwtKeyTTL time.Duration // zero: the JWT key does not rotate
	onEvent   func(KeyEvent)
	auths     []*authority
	dropped   []*authority // removed from auths; files deleted at commit
	needNew   []string     // kinds whose active key was removed from disk
	forgot    bool         // the journal named keys removed from disk
	sequence  uint64
	tick      time.Duration
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

// X509Authorities returns the published root certificates of the trust
// domain (prepared, active and retired roots). The slice is fresh; the
// certificates are shared and must not be modified.
func (c *CA) X509Authorities() []*x509.Certificate {
	return append([]*x509.Certificate(nil), c.Snapshot().X509...)
}

// X509BundleDER returns the X.509 bundle as concatenated DER certificates
// (the Workload API's bundle format). The caller must not modify it.
func (c *CA) X509BundleDER() []byte { return c.Snapshot().X509DER }

// JWKS returns the JWT bundle as a JWKS document (keys with use
// "jwt-svid"). The caller must not modify it.
func (c *CA) JWKS() []byte { return c.Snapshot().JWKS }

// OIDCJWKS returns the JWT signing keys as a JWKS for OIDC consumers: "use"
// is "sig" and "alg" ES256, since generic JOSE libraries skip keys with use
// "jwt-svid". The caller must not modify it.
func (c *CA) OIDCJWKS() []byte { return c.set.Load().oidcJWKS }

// JWTIssuer returns the configured "iss" of JWT-SVIDs ("" when none).
func (c *CA) JWTIssuer() string { return c.jwtIssuer }

// Bundle returns the trust domain's bundle with X.509 and JWT authorities,
// for validating SVIDs with go-spiffe. The caller must not modify it.
func (c *CA) Bundle() *spiffebundle.Bundle { return c.Snapshot().Bundle }

// JWTKeyID returns the kid of the active JWT signing key.
func (c *CA) JWTKeyID() string { return c.jwt.Load().kid }
