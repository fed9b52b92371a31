package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodeward/nodeward/internal/dnsname"
)

// backdate is subtracted from NotBefore to tolerate clock skew between the
// agent and the peers that verify its SVIDs.
const backdate = 10 * time.Second

// MinLeafLife is the least remaining lifetime an SVID must have to be minted
// or served: a leaf clamped to an issuer that expires sooner is refused
// (ErrIssuerExpiring) rather than handed out already useless.
const MinLeafLife = 5 * time.Second

// maxSerial is 2^128-1: serials are random in [1, maxSerial], positive and
// at most 128 bits (RFC 5280 allows up to 20 octets).
var maxSerial = new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 128), big.NewInt(1))

// MintX509SVID mints an X.509-SVID for id, which must be in the CA's trust
// domain and have a path. The leaf has a fresh P-256 key, exactly one URI
// SAN (id), dnsNames as DNS SANs, cA=false, a critical key usage of
// digitalSignature only, EKU serverAuth and clientAuth, and a random 128-bit
// serial; it is valid from now-10s to now+ttl, clamped to the issuer's
// expiry.
func (c *CA) MintX509SVID(id spiffeid.ID, dnsNames []string, ttl time.Duration) (*X509SVID, error) {
	if ttl <= 0 {
		return nil, fmt.Errorf("mint X.509-SVID: %w: %v", ErrBadTTL, ttl)
	}
	if err := c.checkID(id); err != nil {
		return nil, fmt.Errorf("mint X.509-SVID: %w", err)
	}
	for _, name := range dnsNames {
		if !dnsname.Valid(name) {
			return nil, fmt.Errorf("mint X.509-SVID for %s: %w: %q", id, ErrBadDNSName, name)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("mint X.509-SVID: generate key: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("mint X.509-SVID: encode key: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return nil, fmt.Errorf("mint X.509-SVID: %w", err)
	}
	ski, err := subjectKeyID(&key.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("mint X.509-SVID: %w", err)
	}
	iss := c.issuer.Load()
	now := c.clock()
	notAfter := now.Add(ttl)
	if notAfter.After(iss.notAfter) {
		notAfter = iss.notAfter
	}
	if notAfter.Sub(now) < min(c.minLeafLife(), ttl) {
		return nil, fmt.Errorf("mint X.509-SVID for %s: %w (issuer not after %s)", id, ErrIssuerExpiring, iss.notAfter.UTC().Format(time.RFC3339))
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{Organization: []string{"SPIFFE"}},
		NotBefore:    now.Add(-backdate),
		NotAfter:     notAfter,
		// Go marks the key usage extension critical.
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  []*url.URL{id.URL()},
		DNSNames:              dnsNames,
		SubjectKeyId:          ski,
		// AuthorityKeyId is taken from the issuer's SubjectKeyId.
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, iss.cert, &key.PublicKey, iss.signer)
	if err != nil {
		return nil, fmt.Errorf("mint X.509-SVID for %s: sign: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("mint X.509-SVID for %s: parse: %w", id, err)
	}
	chain := []*x509.Certificate{leaf}
	if iss.intermediate {
		chain = append(chain, iss.cert)
	}
	return &X509SVID{ID: id, Certificates: chain, PrivateKey: key, KeyDER: keyDER}, nil
}

// checkID accepts a workload SPIFFE ID of the CA's trust domain: not zero,
// with a non-empty path.
func (c *CA) checkID(id spiffeid.ID) error {
	if id.IsZero() {
		return fmt.Errorf("%w: zero ID", ErrBadID)
	}
	if id.TrustDomain() != c.td {
		return fmt.Errorf("%w: %s is outside trust domain %s", ErrBadID, id, c.td.Name())
	}
	if id.Path() == "" {
		return fmt.Errorf("%w: %s has no path", ErrBadID, id)
	}
	return nil
}

// newRoot self-signs the trust domain's root certificate for key.
func newRoot(td spiffeid.TrustDomain, key crypto.Signer, now time.Time, ttl time.Duration) (*x509.Certificate, error) {
	sn, err := serial()
	if err != nil {
		return nil, fmt.Errorf("create root certificate: %w", err)
	}
	ski, err := subjectKeyID(key.Public())
	if err != nil {
		return nil, fmt.Errorf("create root certificate: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "nodeward " + td.Name() + " root", Organization: []string{"nodeward"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{td.ID().URL()},
		SubjectKeyId:          ski,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create root certificate: %w", err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("create root certificate: parse: %w", err)
	}
	return root, nil
}

// serial returns a random positive serial number of at most 128 bits.
func serial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, maxSerial)
	if err != nil {
		return nil, fmt.Errorf("serial: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

// subjectKeyID is the first 20 bytes of the SHA-256 of the key's DER
// SubjectPublicKeyInfo.
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("subject key id: %w", err)
	}
	sum := sha256.Sum256(der)
	return sum[:20], nil
}
