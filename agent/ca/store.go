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
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/nodeward/nodeward/workloadapi/atomicfile"
)

// File names inside the data directory.
const (
	RootKeyFile  = "ca_key.pem"  // PKCS#8 PEM, ECDSA P-256, mode 0600
	RootCertFile = "ca_cert.pem" // PEM certificate, mode 0644
	// TPMRootCertFile holds the root certificate of a TPM-held root key
	// (Config.RootSigner), so switching key kinds never mixes roots.
	TPMRootCertFile = "ca_cert_tpm.pem"
	JWTKeyFile      = "jwt_key.pem" // PKCS#8 PEM, ECDSA P-256, mode 0600
)

const (
	defaultRootTTL = 5 * 365 * 24 * time.Hour
	maxFileSize    = 64 << 10 // a PEM key or certificate is a few hundred bytes
)

// LoadOrCreate loads the CA from cfg.Dir, creating the directory, keys and
// root certificate when they do not exist yet. The same root and JWT key
// are reused across restarts; a root past 80% of its lifetime is replaced
// by a new one for the same key (so SVIDs issued under the old one still
// verify).
func LoadOrCreate(cfg Config) (*CA, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, fmt.Errorf("ca: %w: trust domain is required", ErrInvalidConfig)
	}
	if cfg.Dir == "" {
		return nil, fmt.Errorf("ca: %w: data dir is required", ErrInvalidConfig)
	}
	if cfg.RootTTL < 0 {
		return nil, fmt.Errorf("ca: %w: negative root ttl %v", ErrInvalidConfig, cfg.RootTTL)
	}
	if cfg.RootTTL == 0 {
		cfg.RootTTL = defaultRootTTL
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := ensureDir(cfg.Dir); err != nil {
		return nil, err
	}
	var rootKey crypto.Signer = cfg.RootSigner
	rootFile := TPMRootCertFile
	if rootKey == nil {
		k, err := loadOrCreateKey(filepath.Join(cfg.Dir, RootKeyFile), cfg.Logger)
		if err != nil {
			return nil, err
		}
		rootKey, rootFile = k, RootCertFile
	}
	jwtKey, err := loadOrCreateKey(filepath.Join(cfg.Dir, JWTKeyFile), cfg.Logger)
	if err != nil {
		return nil, err
	}
	root, err := loadOrCreateRoot(cfg, rootKey, rootFile)
	if err != nil {
		return nil, err
	}
	c := &CA{
		td:        cfg.TrustDomain,
		clock:     cfg.Clock,
		root:      root,
		jwtKey:    jwtKey,
		jwtIssuer: cfg.JWTIssuer,
	}
	c.issuer.Store(&issuer{cert: root, signer: rootKey})
	if cfg.RootSigner != nil {
		c.rootSigner = cfg.RootSigner
		c.intermediateTTL = cfg.IntermediateTTL
		if c.intermediateTTL <= 0 {
			c.intermediateTTL = defaultIntermediateTTL
		}
		if err := c.RotateIntermediate(); err != nil {
			return nil, err
		}
	}
	if err := c.finish(); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	return c, nil
}

// ensureDir creates dir 0700, or checks that an existing one is a directory
// that group and others cannot write to.
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
		return fmt.Errorf("data dir %s: %w: not a directory", dir, ErrInvalidConfig)
	}
	if perm := st.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("data dir %s: %w: mode %#o is group or other writable (chmod 0700 it)", dir, ErrUnsafeFile, perm)
	}
	return nil
}

// readFile reads a regular file of at most maxFileSize bytes. With private
// set, a file anyone but its owner may access is refused. The mode is
// checked on the open file, so it is the one that is read.
func readFile(path string, private bool) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }() // read-only: nothing to lose on close
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %w: not a regular file", path, ErrCorruptFile)
	}
	if perm := st.Mode().Perm(); private && perm&^0o600 != 0 {
		return nil, fmt.Errorf("%s: %w: mode %#o, want 0600", path, ErrUnsafeFile, perm)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("%s: %w: larger than %d bytes", path, ErrCorruptFile, maxFileSize)
	}
	return data, nil
}

// loadOrCreateKey loads the P-256 key at path or creates it.
func loadOrCreateKey(path string, log *slog.Logger) (*ecdsa.PrivateKey, error) {
	data, err := readFile(path, true)
	if errors.Is(err, fs.ErrNotExist) {
		return createKey(path, log)
	}
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	// Errors below name the file only, never its content.
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("key %s: %w: no PKCS#8 PEM block (\"PRIVATE KEY\")", path, ErrCorruptFile)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w: malformed PKCS#8 key", path, ErrCorruptFile)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, fmt.Errorf("key %s: %w: not an ECDSA P-256 key", path, ErrCorruptFile)
	}
	return ek, nil
}

func createKey(path string, log *slog.Logger) (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("key %s: generate: %w", path, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("key %s: encode: %w", path, err)
	}
	if err := atomicfile.Write(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	log.Info("created key", "file", path)
	return key, nil
}

// loadOrCreateRoot loads the root certificate and checks that it is a CA
// for cfg.TrustDomain, self-signed by key; it creates a root when there is
// none or when the stored one is past 80% of its lifetime.
func loadOrCreateRoot(cfg Config, key crypto.Signer, file string) (*x509.Certificate, error) {
	path := filepath.Join(cfg.Dir, file)
	now := cfg.Clock()
	data, err := readFile(path, false)
	switch {
	case err == nil:
		root, err := parseRoot(path, data, cfg, key)
		if err != nil {
			return nil, err
		}
		if now.Before(root.NotBefore) {
			cfg.Logger.Warn("clock is before the root certificate's start: SVIDs will not verify until the clock is right",
				"file", path, "not_before", root.NotBefore, "now", now)
		}
		life := root.NotAfter.Sub(root.NotBefore)
		if now.Before(root.NotBefore.Add(life / 10 * 8)) {
			return root, nil
		}
		cfg.Logger.Warn("root certificate past 80% of its lifetime: replacing it (same key)", "file", path, "not_after", root.NotAfter)
	case errors.Is(err, fs.ErrNotExist):
	default:
		return nil, fmt.Errorf("root: %w", err)
	}
	root, err := newRoot(cfg.TrustDomain, key, now, cfg.RootTTL)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}), 0o644); err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	cfg.Logger.Info("created root certificate", "file", path, "trust_domain", cfg.TrustDomain.Name(), "not_after", root.NotAfter)
	return root, nil
}

// parseRoot parses a stored root and checks it belongs to cfg.TrustDomain
// and key.
func parseRoot(path string, data []byte, cfg Config, key crypto.Signer) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("root %s: %w: no CERTIFICATE PEM block", path, ErrCorruptFile)
	}
	root, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("root %s: %w: %w", path, ErrCorruptFile, err)
	}
	if uris := root.URIs; len(uris) != 1 || uris[0].String() != cfg.TrustDomain.IDString() {
		return nil, fmt.Errorf("root %s: %w: it belongs to %v, not %s: fix trust_domain, or move the data dir aside to start a new trust domain",
			path, ErrTrustDomainMismatch, uris, cfg.TrustDomain.IDString())
	}
	if !root.IsCA || !root.BasicConstraintsValid {
		return nil, fmt.Errorf("root %s: %w: not a CA certificate", path, ErrCorruptFile)
	}
	if pub, ok := root.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(key.Public()) {
		keyName := RootKeyFile
		if cfg.RootSigner != nil {
			keyName = "the TPM-held root key"
		}
		return nil, fmt.Errorf("root %s: %w: does not match %s", path, ErrCorruptFile, keyName)
	}
	if err := root.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("root %s: %w: bad self-signature: %w", path, ErrCorruptFile, err)
	}
	return root, nil
}
