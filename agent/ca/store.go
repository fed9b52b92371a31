package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/nodeward/nodeward/workloadapi/atomicfile"
)

// File names inside the data directory.
const (
	RootKeyFile  = "ca_key.pem"
	RootCertFile = "ca_cert.pem"
	JWTKeyFile   = "jwt_key.pem"
)

// LoadOrCreate loads the CA from cfg.Dir, creating the directory, keys and
// root certificate when they do not exist yet.
func LoadOrCreate(cfg Config) (*CA, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("ca: trust domain is required")
	}
	if cfg.Dir == "" {
		return nil, errors.New("ca: data dir is required")
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.RootTTL <= 0 {
		cfg.RootTTL = defaultRootTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := ensureDir(cfg.Dir); err != nil {
		return nil, err
	}
	rootKey, err := loadOrCreateKey(filepath.Join(cfg.Dir, RootKeyFile), cfg.Logger)
	if err != nil {
		return nil, err
	}
	jwtKey, err := loadOrCreateKey(filepath.Join(cfg.Dir, JWTKeyFile), cfg.Logger)
	if err != nil {
		return nil, err
	}
	root, err := loadOrCreateRoot(cfg, rootKey)
	if err != nil {
		return nil, err
	}
	c := &CA{
		td:        cfg.TrustDomain,
		clock:     cfg.Clock,
		root:      root,
		issuer:    issuer{cert: root, signer: rootKey},
		jwtKey:    jwtKey,
		jwtIssuer: cfg.JWTIssuer,
	}
	if err := c.finish(); err != nil {
		return nil, err
	}
	return c, nil
}

// ensureDir creates dir 0700, or checks that an existing one is not
// writable by group or others.
func ensureDir(dir string) error {
	st, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("data dir %s: %w", dir, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("data dir %s: %w", dir, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("data dir %s: not a directory", dir)
	}
	if st.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("data dir %s: %w: mode %v is group or other writable", dir, ErrUnsafeFile, st.Mode().Perm())
	}
	return nil
}

func loadOrCreateKey(path string, log *slog.Logger) (*ecdsa.PrivateKey, error) {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate key %s: %w", path, err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, fmt.Errorf("encode key %s: %w", path, err)
		}
		if err := atomicfile.Write(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return nil, err
		}
		log.Info("created key", "file", path)
		return key, nil
	}
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", path, err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("key %s: %w: mode %v, want 0600", path, ErrUnsafeFile, st.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", path, err)
	}
	// Errors below name the file only: never its content.
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("key %s: no PKCS#8 PEM block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("key %s: malformed PKCS#8 key", path)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, fmt.Errorf("key %s: not an ECDSA P-256 key", path)
	}
	return ek, nil
}

func loadOrCreateRoot(cfg Config, key crypto.Signer) (*x509.Certificate, error) {
	path := filepath.Join(cfg.Dir, RootCertFile)
	now := cfg.Clock()
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		root, err := parseRoot(path, data)
		if err != nil {
			return nil, err
		}
		if got := root.URIs; len(got) != 1 || got[0].String() != cfg.TrustDomain.IDString() {
			return nil, fmt.Errorf("root %s belongs to another trust domain (%v), not %s: move the data dir aside or fix trust_domain",
				path, got, cfg.TrustDomain.IDString())
		}
		if !publicKeysEqual(root.PublicKey, key.Public()) {
			return nil, fmt.Errorf("root %s does not match key %s", path, RootKeyFile)
		}
		life := root.NotAfter.Sub(root.NotBefore)
		if now.Before(root.NotBefore.Add(life * 8 / 10)) {
			return root, nil
		}
		cfg.Logger.Warn("root certificate past 80% of its lifetime: replacing it", "file", path, "not_after", root.NotAfter)
	case errors.Is(err, fs.ErrNotExist):
	default:
		return nil, fmt.Errorf("root %s: %w", path, err)
	}
	root, err := newRoot(cfg.TrustDomain, key, now, cfg.RootTTL)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}), 0o644); err != nil {
		return nil, err
	}
	cfg.Logger.Info("created root certificate", "file", path, "trust_domain", cfg.TrustDomain.Name(), "not_after", root.NotAfter)
	return root, nil
}

func parseRoot(path string, data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("root %s: no CERTIFICATE PEM block", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("root %s: %w", path, err)
	}
	return c, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(*ecdsa.PublicKey)
	return ok && ea.Equal(b)
}
