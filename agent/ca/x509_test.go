package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var oidKeyUsage = asn1.ObjectIdentifier{2, 5, 29, 15}

func extension(cert *x509.Certificate, oid asn1.ObjectIdentifier) (critical, found bool) {
	for _, ext := range cert.Extensions {
		if ext.Id.Equal(oid) {
			return ext.Critical, true
		}
	}
	return false, false
}

func TestX509SVIDProfile(t *testing.T) {
	c := newCA(t, dataDir(t), func() time.Time { return t0 })
	svid, err := c.MintX509SVID(webID, []string{"web.internal", "*.web.example.com"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if len(svid.Certificates) != 1 {
		t.Fatalf("chain has %d certificates, want the leaf only (no root)", len(svid.Certificates))
	}
	leaf := svid.Certificates[0]
	root := c.X509Authorities()[0]
	checks := []struct {
		name string
		ok   bool
		got  any
	}{
		{"ID field", svid.ID == webID, svid.ID},
		{"exactly one URI SAN, the SPIFFE ID", len(leaf.URIs) == 1 && leaf.URIs[0].String() == webID.String(), leaf.URIs},
		{"DNS SANs", strings.Join(leaf.DNSNames, ",") == "web.internal,*.web.example.com", leaf.DNSNames},
		{"no IP or email SANs", len(leaf.IPAddresses) == 0 && len(leaf.EmailAddresses) == 0, leaf.IPAddresses},
		{"basic constraints valid, cA=false", leaf.BasicConstraintsValid && !leaf.IsCA, leaf.IsCA},
		{"key usage digitalSignature only", leaf.KeyUsage == x509.KeyUsageDigitalSignature, leaf.KeyUsage},
		{"EKU serverAuth+clientAuth", len(leaf.ExtKeyUsage) == 2 && leaf.ExtKeyUsage[0] == x509.ExtKeyUsageServerAuth &&
			leaf.ExtKeyUsage[1] == x509.ExtKeyUsageClientAuth && len(leaf.UnknownExtKeyUsage) == 0, leaf.ExtKeyUsage},
		{"serial positive, at most 128 bits", leaf.SerialNumber.Sign() > 0 && leaf.SerialNumber.BitLen() <= 128, leaf.SerialNumber},
		{"NotBefore = now-10s", leaf.NotBefore.Equal(t0.Add(-10 * time.Second)), leaf.NotBefore},
		{"NotAfter = now+ttl", leaf.NotAfter.Equal(t0.Add(time.Hour)), leaf.NotAfter},
		{"SubjectKeyId set", len(leaf.SubjectKeyId) == 20, leaf.SubjectKeyId},
		{"AuthorityKeyId = root SKID", len(root.SubjectKeyId) > 0 && bytes.Equal(leaf.AuthorityKeyId, root.SubjectKeyId), leaf.AuthorityKeyId},
		{"subject O=SPIFFE", leaf.Subject.String() == "O=SPIFFE", leaf.Subject},
		{"issuer is the root", bytes.Equal(leaf.RawIssuer, root.RawSubject), leaf.Issuer},
		{"signed ECDSA-SHA256", leaf.SignatureAlgorithm == x509.ECDSAWithSHA256, leaf.SignatureAlgorithm},
	}
	for _, ch := range checks {
		if !ch.ok {
			t.Errorf("%s: got %v", ch.name, ch.got)
		}
	}
	if critical, found := extension(leaf, oidKeyUsage); !found || !critical {
		t.Errorf("key usage extension found=%v critical=%v, want critical", found, critical)
	}
	// The key is P-256, belongs to the leaf, and KeyDER is its PKCS#8.
	if svid.PrivateKey.Curve != elliptic.P256() || !svid.PrivateKey.PublicKey.Equal(leaf.PublicKey) {
		t.Error("private key is not the leaf's P-256 key")
	}
	parsedKey, err := x509.ParsePKCS8PrivateKey(svid.KeyDER)
	if err != nil || !svid.PrivateKey.Equal(parsedKey) {
		t.Errorf("KeyDER is not the PKCS#8 of PrivateKey: %v", err)
	}
	// go-spiffe accepts it as an SVID and verifies it against the bundle.
	parsed, err := x509svid.ParseRaw(leaf.Raw, svid.KeyDER)
	if err != nil {
		t.Fatalf("go-spiffe ParseRaw: %v", err)
	}
	if parsed.ID != webID {
		t.Errorf("go-spiffe parsed ID %v", parsed.ID)
	}
	id, chains, err := x509svid.Verify(svid.Certificates, c.Bundle(), x509svid.WithTime(t0))
	if err != nil || id != webID || len(chains) != 1 || !chains[0][len(chains[0])-1].Equal(root) {
		t.Fatalf("x509svid.Verify = %v, %d chains, %v", id, len(chains), err)
	}
}

func TestX509SVIDFreshKeyAndSerial(t *testing.T) {
	c := newCA(t, dataDir(t), nil)
	a, err := c.MintX509SVID(webID, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.MintX509SVID(webID, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if a.PrivateKey.Equal(b.PrivateKey) || bytes.Equal(a.KeyDER, b.KeyDER) {
		t.Error("two SVIDs share a key")
	}
	if a.Certificates[0].SerialNumber.Cmp(b.Certificates[0].SerialNumber) == 0 {
		t.Error("two SVIDs share a serial")
	}
	if len(a.Certificates[0].DNSNames) != 0 {
		t.Errorf("DNS SANs without dnsNames: %v", a.Certificates[0].DNSNames)
	}
}

func TestX509SVIDClampedToRoot(t *testing.T) {
	c, err := LoadOrCreate(Config{TrustDomain: td, Dir: dataDir(t), Clock: func() time.Time { return t0 }, RootTTL: 2 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	svid, err := c.MintX509SVID(webID, nil, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	root := c.X509Authorities()[0]
	if got := svid.Certificates[0].NotAfter; !got.Equal(root.NotAfter) || !got.Equal(t0.Add(2*time.Hour)) {
		t.Errorf("NotAfter = %v, want the root's %v", got, root.NotAfter)
	}
}

func TestRootProfile(t *testing.T) {
	c, err := LoadOrCreate(Config{TrustDomain: td, Dir: dataDir(t), Clock: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	root := c.X509Authorities()[0]
	checks := []struct {
		name string
		ok   bool
		got  any
	}{
		{"cA=true", root.BasicConstraintsValid && root.IsCA, root.IsCA},
		{"key usage certSign|cRLSign|digitalSignature", root.KeyUsage == x509.KeyUsageCertSign|x509.KeyUsageCRLSign|x509.KeyUsageDigitalSignature, root.KeyUsage},
		{"URI SAN is the trust domain", len(root.URIs) == 1 && root.URIs[0].String() == "spiffe://example.org", root.URIs},
		{"subject", root.Subject.CommonName == "nodeward example.org root" && strings.Join(root.Subject.Organization, ",") == "nodeward", root.Subject},
		{"self-signed", root.CheckSignatureFrom(root) == nil && bytes.Equal(root.RawIssuer, root.RawSubject), root.Issuer},
		{"default lifetime 5 years", root.NotAfter.Equal(t0.Add(5 * 365 * 24 * time.Hour)), root.NotAfter},
		{"NotBefore backdated", root.NotBefore.Equal(t0.Add(-10 * time.Second)), root.NotBefore},
		{"P-256 key", root.PublicKeyAlgorithm == x509.ECDSA && root.PublicKey.(*ecdsa.PublicKey).Curve == elliptic.P256(), root.PublicKeyAlgorithm},
		{"serial positive, at most 128 bits", root.SerialNumber.Sign() > 0 && root.SerialNumber.BitLen() <= 128, root.SerialNumber},
		{"bundle DER is the root", bytes.Equal(c.X509BundleDER(), root.Raw), len(c.X509BundleDER())},
		{"TrustDomain", c.TrustDomain() == td, c.TrustDomain()},
	}
	for _, ch := range checks {
		if !ch.ok {
			t.Errorf("%s: got %v", ch.name, ch.got)
		}
	}
	auths := c.Bundle().X509Authorities()
	if len(auths) != 1 || !auths[0].Equal(root) {
		t.Errorf("bundle X.509 authorities = %d, want the root", len(auths))
	}
}

func TestMintX509SVIDRefusesBadInput(t *testing.T) {
	c := newCA(t, dataDir(t), nil)
	long := strings.Repeat("a", 64) + ".example.com"
	tests := []struct {
		name string
		id   spiffeid.ID
		dns  []string
		ttl  time.Duration
		want error
	}{
		{"zero ID", spiffeid.ID{}, nil, time.Hour, ErrBadID},
		{"trust domain ID (empty path)", td.ID(), nil, time.Hour, ErrBadID},
		{"foreign trust domain", spiffeid.RequireFromString("spiffe://other.org/web"), nil, time.Hour, ErrBadID},
		{"zero ttl", webID, nil, 0, ErrBadTTL},
		{"negative ttl", webID, nil, -time.Second, ErrBadTTL},
		{"empty DNS name", webID, []string{""}, time.Hour, ErrBadDNSName},
		{"DNS name with space", webID, []string{"ok.example", "a b.example"}, time.Hour, ErrBadDNSName},
		{"IP address as DNS name", webID, []string{"10.0.0.1"}, time.Hour, ErrBadDNSName},
		{"label too long", webID, []string{long}, time.Hour, ErrBadDNSName},
		{"leading hyphen", webID, []string{"-a.example"}, time.Hour, ErrBadDNSName},
		{"inner wildcard", webID, []string{"a.*.example"}, time.Hour, ErrBadDNSName},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svid, err := c.MintX509SVID(tt.id, tt.dns, tt.ttl)
			if !errors.Is(err, tt.want) || svid != nil {
				t.Fatalf("MintX509SVID = %v, %v; want %v", svid, err, tt.want)
			}
		})
	}
}

// TestConcurrentMint mints from several goroutines; -race checks that the
// CA has no shared mutable state.
func TestConcurrentMint(t *testing.T) {
	c := newCA(t, dataDir(t), nil)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 4 {
		wg.Go(func() {
			id := spiffeid.RequireFromString(fmt.Sprintf("spiffe://example.org/w%d", i))
			svid, err := c.MintX509SVID(id, nil, time.Minute)
			if err != nil {
				errs <- err
				return
			}
			if _, _, err := x509svid.Verify(svid.Certificates, c.Bundle()); err != nil {
				errs <- err
			}
		})
		wg.Go(func() {
			if _, err := c.MintJWTSVID(webID, []string{"aud"}, time.Minute); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
