package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net/url"
	"time"
)

const defaultIntermediateTTL = 24 * time.Hour

// RotateIntermediate makes a new software intermediate (a fresh P-256 key
// that lives only in memory) certified by the external root key, and mints
// all later SVIDs with it. It is the only CA operation that uses the root
// key's device (a TPM signature), and it runs off the request path. SVIDs
// minted under the previous intermediate carry it in their chain and stay
// valid against the unchanged bundle until they expire. Without an
// external root key it does nothing.
func (c *CA) RotateIntermediate() error {
	if !c.external {
		return nil
	}
	c.tpmMu.Lock()
	defer c.tpmMu.Unlock()
	c.mu.Lock()
	root, signer := c.root, c.rootSigner
	c.mu.Unlock()
	iss, err := c.newIntermediate(root, signer)
	if err != nil {
		return err
	}
	c.issuer.Store(iss)
	return nil
}

// newIntermediate makes a software intermediate certified by root (whose
// key is signer): one signature by the root key's device.
func (c *CA) newIntermediate(root *x509.Certificate, signer crypto.Signer) (*issuer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("intermediate: generate key: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return nil, fmt.Errorf("intermediate: %w", err)
	}
	ski, err := subjectKeyID(&key.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("intermediate: %w", err)
	}
	now := c.clock()
	notAfter := now.Add(c.intermediateTTL)
	if notAfter.After(root.NotAfter) {
		notAfter = root.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "nodeward " + c.td.Name() + " intermediate", Organization: []string{"nodeward"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		URIs:                  []*url.URL{c.td.ID().URL()},
		SubjectKeyId:          ski,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, &key.PublicKey, signer)
	if err != nil {
		return nil, fmt.Errorf("intermediate: root key signature: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("intermediate: parse: %w", err)
	}
	if err := cert.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("intermediate: root key produced a bad signature: %w", err)
	}
	// Half its life, counted from now: NotBefore is backdated for clock
	// skew, and counting from it would rotate at once for short lifetimes.
	return &issuer{cert: cert, signer: key, rotateAt: now.Add(notAfter.Sub(now) / 2), notAfter: cert.NotAfter, intermediate: true}, nil
}

// NextRotation is when the intermediate should be replaced (half its
// lifetime); zero without an external root key.
func (c *CA) NextRotation() time.Time {
	if !c.external {
		return time.Time{}
	}
	return c.issuer.Load().rotateAt
}

// Intermediate returns the current intermediate certificate, nil without an
// external root key.
func (c *CA) Intermediate() *x509.Certificate {
	if !c.external {
		return nil
	}
	return c.issuer.Load().cert
}

// CanIssue reports whether the CA can mint a useful SVID now: false when a
// TPM-signed intermediate has less than MinLeafLife left (it could not be
// renewed in time, e.g. the TPM hangs). A file-held root always can.
func (c *CA) CanIssue() bool {
	now := c.clock()
	if j := c.jwt.Load(); j != nil && !j.notAfter.IsZero() && j.notAfter.Sub(now) < c.minLeafLife() {
		return false
	}
	return c.issuer.Load().notAfter.Sub(now) >= c.minLeafLife()
}

// minLeafLife is MinLeafLife, or a quarter of a shorter intermediate
// lifetime (tests use intermediates of a few seconds; the intermediate is
// renewed at half its life).
func (c *CA) minLeafLife() time.Duration {
	if c.intermediateTTL > 0 {
		return min(MinLeafLife, c.intermediateTTL/4)
	}
	return MinLeafLife
}
