package ca

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func newCA(t testing.TB, dir string) *CA {
	t.Helper()
	c, err := LoadOrCreate(Config{TrustDomain: td, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestX509SVIDProfile(t *testing.T) {
	c := newCA(t, filepath.Join(t.TempDir(), "data"))
	id := spiffeid.RequireFromString("spiffe://example.org/web")
	svid, err := c.MintX509SVID(id, []string{"web.internal"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf := svid.Certificates[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		t.Errorf("URI SANs = %v", leaf.URIs)
	}
	if leaf.IsCA || !leaf.BasicConstraintsValid {
		t.Error("leaf must have basic constraints with cA=false")
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("KeyUsage = %v", leaf.KeyUsage)
	}
	critical := false
	for _, ext := range leaf.Extensions {
		if ext.Id.Equal([]int{2, 5, 29, 15}) {
			critical = ext.Critical
		}
	}
	if !critical {
		t.Error("keyUsage not critical")
	}
	if len(leaf.ExtKeyUsage) != 2 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || leaf.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth {
		t.Errorf("EKU = %v", leaf.ExtKeyUsage)
	}
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "web.internal" {
		t.Errorf("DNS = %v", leaf.DNSNames)
	}
	if leaf.SerialNumber.Sign() <= 0 || len(leaf.SubjectKeyId) == 0 || len(leaf.AuthorityKeyId) == 0 {
		t.Error("serial, SKID or AKID missing")
	}
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d < time.Hour || d > time.Hour+time.Minute {
		t.Errorf("lifetime %v", d)
	}
	// go-spiffe accepts it as an SVID and verifies it against the bundle.
	parsed, err := x509svid.ParseRaw(leaf.Raw, svid.KeyDER)
	if err != nil {
		t.Fatalf("go-spiffe ParseRaw: %v", err)
	}
	if parsed.ID != id {
		t.Errorf("parsed ID %v", parsed.ID)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, c.Bundle()); err != nil {
		t.Fatalf("x509svid.Verify: %v", err)
	}
	if !bytes.Equal(c.X509BundleDER(), c.X509Authorities()[0].Raw) {
		t.Error("bundle DER is not the root")
	}
}

func TestMintRefusesBadInput(t *testing.T) {
	c := newCA(t, filepath.Join(t.TempDir(), "data"))
	if _, err := c.MintX509SVID(spiffeid.RequireFromString("spiffe://example.org"), nil, time.Hour); err == nil {
		t.Error("root ID accepted")
	}
	if _, err := c.MintX509SVID(spiffeid.RequireFromString("spiffe://other.org/x"), nil, time.Hour); err == nil {
		t.Error("foreign trust domain accepted")
	}
	if _, err := c.MintX509SVID(spiffeid.RequireFromString("spiffe://example.org/x"), nil, 0); err == nil {
		t.Error("zero ttl accepted")
	}
	if _, err := c.MintJWTSVID(spiffeid.RequireFromString("spiffe://example.org/x"), nil, time.Minute); err == nil {
		t.Error("JWT without audience accepted")
	}
}

func TestPersistenceAndModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	a := newCA(t, dir)
	b := newCA(t, dir)
	if !bytes.Equal(a.root.Raw, b.root.Raw) || a.JWTKeyID() != b.JWTKeyID() {
		t.Fatal("restart did not reuse the root and JWT key")
	}
	st, _ := os.Stat(dir)
	if st.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v", st.Mode().Perm())
	}
	for f, mode := range map[string]os.FileMode{RootKeyFile: 0o600, JWTKeyFile: 0o600, RootCertFile: 0o644} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Mode().Perm() != mode {
			t.Errorf("%s: %v %v, want %v", f, err, st.Mode().Perm(), mode)
		}
	}
	// Wrong trust domain for an existing data dir.
	if _, err := LoadOrCreate(Config{TrustDomain: spiffeid.RequireTrustDomainFromString("other.org"), Dir: dir}); err == nil ||
		!strings.Contains(err.Error(), "another trust domain") {
		t.Errorf("trust domain mismatch: %v", err)
	}
	// A key readable by others is refused.
	if err := os.Chmod(filepath.Join(dir, RootKeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreate(Config{TrustDomain: td, Dir: dir}); err == nil || !strings.Contains(err.Error(), "permissions") {
		t.Errorf("open key mode: %v", err)
	}
}

func TestCorruptKeyErrorHasNoKeyBytes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	newCA(t, dir)
	p := filepath.Join(dir, JWTKeyFile)
	data, _ := os.ReadFile(p)
	secret := string(data[40:60])
	if err := os.WriteFile(p, append([]byte("-----BEGIN PRIVATE KEY-----\n"), data[40:80]...), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadOrCreate(Config{TrustDomain: td, Dir: dir})
	if err == nil || !strings.Contains(err.Error(), JWTKeyFile) || strings.Contains(err.Error(), secret) {
		t.Fatalf("corrupt key error = %v", err)
	}
}

func TestJWTSVID(t *testing.T) {
	now := time.Now()
	c, err := LoadOrCreate(Config{TrustDomain: td, Dir: filepath.Join(t.TempDir(), "d"), Clock: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://example.org/api")
	j, err := c.MintJWTSVID(id, []string{"a", "b"}, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	tok, exp := j.Token, j.ExpiresAt
	if exp.Sub(now) > 5*time.Minute || exp.Sub(now) < 4*time.Minute {
		t.Errorf("exp %v", exp)
	}
	svid, err := jwtsvid.ParseAndValidate(tok, c.Bundle(), []string{"b"})
	if err != nil {
		t.Fatalf("ParseAndValidate: %v", err)
	}
	if svid.ID != id || len(svid.Audience) != 2 || svid.Claims["jti"] != j.JTI || len(j.JTI) != 32 {
		t.Errorf("svid %v %v", svid.ID, svid.Audience)
	}
	if _, err := jwtsvid.ParseAndValidate(tok, c.Bundle(), []string{"c"}); err == nil {
		t.Error("wrong audience accepted")
	}
	// Expired token: minted two hours ago with a one-minute lifetime.
	old, _ := LoadOrCreate(Config{TrustDomain: td, Dir: filepath.Join(t.TempDir(), "o"), Clock: func() time.Time { return now.Add(-2 * time.Hour) }})
	expired, _ := old.MintJWTSVID(id, []string{"a"}, time.Minute)
	if _, err := jwtsvid.ParseAndValidate(expired.Token, old.Bundle(), []string{"a"}); err == nil {
		t.Error("expired token accepted")
	}
	// Header kid matches the JWKS.
	hdr, _ := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[0])
	var h map[string]string
	_ = json.Unmarshal(hdr, &h)
	var jwks struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(c.JWKS(), &jwks); err != nil {
		t.Fatal(err)
	}
	if h["alg"] != "ES256" || len(jwks.Keys) != 1 || jwks.Keys[0]["kid"] != h["kid"] || jwks.Keys[0]["use"] != "jwt-svid" {
		t.Errorf("header %v jwks %s", h, c.JWKS())
	}
}

func BenchmarkMintX509SVID(b *testing.B) {
	c := newCA(b, filepath.Join(b.TempDir(), "d"))
	id := spiffeid.RequireFromString("spiffe://example.org/web")
	for b.Loop() {
		if _, err := c.MintX509SVID(id, nil, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMintJWTSVID(b *testing.B) {
	c := newCA(b, filepath.Join(b.TempDir(), "d"))
	id := spiffeid.RequireFromString("spiffe://example.org/web")
	for b.Loop() {
		if _, err := c.MintJWTSVID(id, []string{"aud"}, time.Minute); err != nil {
			b.Fatal(err)
		}
	}
}
