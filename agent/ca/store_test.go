package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func TestLoadOrCreateFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "var", "data")
	log, logs := newLogger()
	if _, err := LoadOrCreate(Config{TrustDomain: td, Dir: dir, Logger: log}); err != nil {
		t.Fatal(err)
	}
	if got := mode(t, dir); got != 0o700 {
		t.Errorf("data dir mode %#o, want 0700", got)
	}
	files := []struct {
		name    string
		mode    os.FileMode
		pemType string
	}{
		{RootKeyFile, 0o600, "PRIVATE KEY"},
		{JWTKeyFile, 0o600, "PRIVATE KEY"},
		{RootCertFile, 0o644, "CERTIFICATE"},
		{JWTPublicKeyFile, 0o644, "PUBLIC KEY"},
	}
	var secrets [][]byte
	for _, f := range files {
		path := filepath.Join(dir, f.name)
		if got := mode(t, path); got != f.mode {
			t.Errorf("%s mode %#o, want %#o", f.name, got, f.mode)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		block, rest := pem.Decode(data)
		if block == nil || block.Type != f.pemType || len(bytes.TrimSpace(rest)) != 0 {
			t.Errorf("%s: want exactly one %s PEM block", f.name, f.pemType)
			continue
		}
		if f.pemType == "PRIVATE KEY" {
			k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if ek, ok := k.(*ecdsa.PrivateKey); err != nil || !ok || ek.Curve != elliptic.P256() {
				t.Errorf("%s: not a PKCS#8 P-256 key (%v)", f.name, err)
			}
			secrets = append(secrets, data)
		}
	}
	out := logs.String()
	if !strings.Contains(out, "created root certificate") || !strings.Contains(out, "created key") {
		t.Errorf("creation not logged: %s", out)
	}
	for _, s := range secrets {
		if leak := leaked(out, s); leak != "" {
			t.Errorf("log contains key material %q", leak)
		}
	}
	// No temporary files are left behind.
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 4 {
		t.Errorf("data dir has %d entries (%v), want 4", len(entries), err)
	}
}

func TestReuseAcrossRestarts(t *testing.T) {
	dir := dataDir(t)
	a := newCA(t, dir, nil)
	svid, err := a.MintX509SVID(webID, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	log, logs := newLogger()
	b, err := LoadOrCreate(Config{TrustDomain: td, Dir: dir, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(a.X509Authorities()[0].Raw) != sha256.Sum256(b.X509Authorities()[0].Raw) {
		t.Error("restart created a new root")
	}
	if a.JWTKeyID() != b.JWTKeyID() || !bytes.Equal(a.JWKS(), b.JWKS()) {
		t.Error("restart created a new JWT key")
	}
	if strings.Contains(logs.String(), "created") {
		t.Errorf("restart logged a creation: %s", logs.String())
	}
	if _, _, err := x509svid.Verify(svid.Certificates, b.Bundle()); err != nil {
		t.Errorf("SVID from before the restart does not verify: %v", err)
	}
	j, err := a.MintJWTSVID(webID, []string{"x"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var hdr map[string]string
	decodeSegment(t, strings.Split(j.Token, ".")[0], &hdr)
	if hdr["kid"] != b.JWTKeyID() {
		t.Error("kid changed across restarts")
	}
}

func TestTrustDomainMismatch(t *testing.T) {
	dir := dataDir(t)
	newCA(t, dir, nil)
	_, err := LoadOrCreate(Config{TrustDomain: spiffeid.RequireTrustDomainFromString("other.org"), Dir: dir})
	if !errors.Is(err, ErrTrustDomainMismatch) {
		t.Fatalf("err = %v, want ErrTrustDomainMismatch", err)
	}
	for _, want := range []string{"spiffe://example.org", "spiffe://other.org", RootCertFile} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestRootRenewal(t *testing.T) {
	dir := dataDir(t)
	clock := &fakeClock{now: t0}
	const ttl = 100 * time.Hour
	load := func() (*CA, string) {
		t.Helper()
		log, logs := newLogger()
		c, err := LoadOrCreate(Config{TrustDomain: td, Dir: dir, Clock: clock.Now, RootTTL: ttl, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		return c, logs.String()
	}
	first, _ := load()
	svid, err := first.MintX509SVID(webID, nil, 99*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	oldRoot := first.X509Authorities()[0]

	clock.Set(t0.Add(79 * time.Hour)) // before 80%: kept
	kept, logs := load()
	if !kept.X509Authorities()[0].Equal(oldRoot) || strings.Contains(logs, "replacing") {
		t.Fatalf("root replaced before 80%% of its life: %s", logs)
	}

	clock.Set(t0.Add(81 * time.Hour)) // past 80%: replaced
	renewed, logs := load()
	newRoot := renewed.X509Authorities()[0]
	if newRoot.Equal(oldRoot) || !newRoot.NotAfter.Equal(t0.Add(81*time.Hour+ttl)) {
		t.Fatalf("root not replaced past 80%% of its life (NotAfter %v)", newRoot.NotAfter)
	}
	if !strings.Contains(logs, "replacing") {
		t.Errorf("replacement not logged: %s", logs)
	}
	if !newRoot.PublicKey.(*ecdsa.PublicKey).Equal(oldRoot.PublicKey) {
		t.Error("renewed root has a new key")
	}
	// An SVID issued under the old root and still valid verifies under the
	// new one.
	if _, _, err := x509svid.Verify(svid.Certificates, renewed.Bundle(), x509svid.WithTime(t0.Add(82*time.Hour))); err != nil {
		t.Errorf("old SVID under renewed root: %v", err)
	}
	// The replacement is persisted.
	again, _ := load()
	if !again.X509Authorities()[0].Equal(newRoot) {
		t.Error("renewed root not persisted")
	}
}

func TestUnsafeModes(t *testing.T) {
	tests := []struct {
		name string
		file string // "" is the data dir
		mode os.FileMode
		want error // nil: loads
	}{
		{"root key 0644", RootKeyFile, 0o644, ErrUnsafeFile},
		{"root key 0640", RootKeyFile, 0o640, ErrUnsafeFile},
		{"jwt key 0604", JWTKeyFile, 0o604, ErrUnsafeFile},
		{"jwt key 0700", JWTKeyFile, 0o700, ErrUnsafeFile},
		{"root key 0400", RootKeyFile, 0o400, nil},
		{"cert 0600", RootCertFile, 0o600, nil},
		{"dir 0777", "", 0o777, ErrUnsafeFile},
		{"dir 0770", "", 0o770, ErrUnsafeFile},
		{"dir 0755", "", 0o755, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := dataDir(t)
			newCA(t, dir, nil)
			path := filepath.Join(dir, tt.file)
			if err := os.Chmod(path, tt.mode); err != nil {
				t.Fatal(err)
			}
			_, err := LoadOrCreate(Config{TrustDomain: td, Dir: dir})
			if tt.want == nil {
				if err != nil {
					t.Fatalf("LoadOrCreate: %v", err)
				}
				return
			}
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), path) {
				t.Fatalf("err = %v, want %v naming %s", err, tt.want, path)
			}
		})
	}
}

// leaked returns a 12-byte window of secret (base64 text or raw bytes)
// found in s, or "".
func leaked(s string, secret []byte) string {
	const w = 12
	for i := 0; i+w <= len(secret); i++ {
		win := string(secret[i : i+w])
		if strings.ContainsAny(win, "-\n ") {
			continue // PEM armour, not secret
		}
		if strings.Contains(s, win) {
			return win
		}
	}
	return ""
}

func pemOf(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func TestCorruptFiles(t *testing.T) {
	random := make([]byte, 120)
	if _, err := rand.Read(random); err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384DER, err := x509.MarshalPKCS8PrivateKey(p384)
	if err != nil {
		t.Fatal(err)
	}
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(p256)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(p256)
	if err != nil {
		t.Fatal(err)
	}
	validKey := pemOf("PRIVATE KEY", pkcs8)
	body := []byte(base64.StdEncoding.EncodeToString(random))
	tests := []struct {
		name string
		file string
		data []byte
	}{
		{"truncated key PEM", RootKeyFile, append([]byte("-----BEGIN PRIVATE KEY-----\n"), validKey[28:90]...)},
		{"garbage in key PEM", JWTKeyFile, pemOf("PRIVATE KEY", random)},
		{"not PEM", JWTKeyFile, body},
		{"SEC1 instead of PKCS#8", RootKeyFile, pemOf("EC PRIVATE KEY", sec1)},
		{"P-384 key", JWTKeyFile, pemOf("PRIVATE KEY", p384DER)},
		{"root key replaced", RootKeyFile, validKey},
		{"garbage in cert PEM", RootCertFile, pemOf("CERTIFICATE", random)},
		{"key in cert file", RootCertFile, validKey},
		{"empty cert", RootCertFile, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := dataDir(t)
			newCA(t, dir, nil)
			if err := os.WriteFile(filepath.Join(dir, tt.file), tt.data, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadOrCreate(Config{TrustDomain: td, Dir: dir})
			if !errors.Is(err, ErrCorruptFile) || !strings.Contains(err.Error(), tt.file) {
				t.Fatalf("err = %v, want ErrCorruptFile naming %s", err, tt.file)
			}
			if leak := leaked(err.Error(), tt.data); leak != "" {
				t.Errorf("error %q contains file content %q", err, leak)
			}
			if leak := leaked(err.Error(), validKey); leak != "" {
				t.Errorf("error %q contains key material %q", err, leak)
			}
		})
	}
}

func TestKeyFileNotRegular(t *testing.T) {
	dir := dataDir(t)
	if err := os.MkdirAll(filepath.Join(dir, JWTKeyFile), 0o700); err != nil {
		t.Fatal(err)
	}
	_, err := LoadOrCreate(Config{TrustDomain: td, Dir: dir})
	if !errors.Is(err, ErrCorruptFile) || !strings.Contains(err.Error(), JWTKeyFile) {
		t.Fatalf("err = %v, want ErrCorruptFile naming %s", err, JWTKeyFile)
	}
}

func TestConfigErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no trust domain", Config{Dir: t.TempDir()}},
		{"no dir", Config{TrustDomain: td}},
		{"negative root ttl", Config{TrustDomain: td, Dir: t.TempDir(), RootTTL: -time.Hour}},
		{"dir is a file", Config{TrustDomain: td, Dir: file}},
	}
	for _, tt := range tests {
		c, err := LoadOrCreate(tt.cfg)
		if !errors.Is(err, ErrInvalidConfig) || c != nil {
			t.Errorf("%s: LoadOrCreate = %v, %v; want ErrInvalidConfig", tt.name, c, err)
		}
	}
}
