package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nodeward/nodeward/internal/atomicfile"
	"github.com/nodeward/nodeward/internal/safefs"
)

// File names inside the data directory.
const (
	RootKeyFile  = "ca_key.pem"  // PKCS#8 PEM, ECDSA P-256, mode 0600
	RootCertFile = "ca_cert.pem" // PEM certificate, mode 0644
	// TPMRootCertFile holds the root certificate of a TPM-held root key
	// (Config.RootSigner), so switching key kinds never mixes roots.
	TPMRootCertFile = "ca_cert_tpm.pem"
	JWTKeyFile      = "jwt_key.pem" // PKCS#8 PEM, ECDSA P-256, mode 0600
	// JWTPublicKeyFile is the public half of JWTKeyFile (PKIX PEM, mode
	// 0644). Besides publishing the key, it records that a JWT key was
	// issued: a jwt_key.pem missing beside it is refused, never replaced.
	JWTPublicKeyFile = "jwt_pub.pem"
	// pendingSuffix names the halves of a key pair being written (see
	// writePair).
	pendingSuffix = ".new"
)

const (
	defaultRootTTL = 5 * 365 * 24 * time.Hour
	maxFileSize    = 64 << 10 // a PEM key or certificate is a few hundred bytes
)

// keyPair names the two files of a key pair in the data directory: the
// private key and its certificate or public key. Both are written together
// (writePair) and one is never re-created while the other exists.
type keyPair struct {
	key, other string
	what       string // what the key is, for messages
}

var (
	rootPair = keyPair{key: RootKeyFile, other: RootCertFile, what: "CA"}
	jwtPair  = keyPair{key: JWTKeyFile, other: JWTPublicKeyFile, what: "JWT signing key"}
)

// dataFiles are the names whose leftover temporary files are removed at
// start.
var dataFiles = []string{
	RootKeyFile, RootCertFile, TPMRootCertFile, JWTKeyFile, JWTPublicKeyFile, JournalFile,
	RootKeyFile + pendingSuffix, RootCertFile + pendingSuffix,
	JWTKeyFile + pendingSuffix, JWTPublicKeyFile + pendingSuffix,
}

// LoadOrCreate loads the CA from cfg.Dir, creating the directory, keys and
// root certificate when they do not exist yet. The same root and JWT key
// are reused across restarts; a root past 80% of its lifetime is replaced
// by a new one for the same key (so SVIDs issued under the old one still
// verify).
//
// The data directory and every directory above it must be owned by root or
// the effective uid and not be writable by group or others; key and
// certificate files must be regular files (not symlinks) with the same
// owners. A key is only ever created together with its certificate or
// public key (both or neither reach the disk); a key whose other half
// exists is never re-created: the error says how to restore or reset.
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
		cfg.Clock = wallNow
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := ensureDir(cfg.Dir); err != nil {
		return nil, err
	}
	unlock, err := lockDir(cfg.Dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	removed, err := atomicfile.CleanTemps(cfg.Dir, dataFiles...)
	for _, p := range removed {
		cfg.Logger.Warn("removed a temporary file left by an interrupted write", "file", p)
	}
	if err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	if cfg.KeyTTL < 0 || cfg.JWTKeyTTL < 0 {
		return nil, fmt.Errorf("ca: %w: negative key ttl", ErrInvalidConfig)
	}
	if cfg.RootSigner != nil && cfg.TPMKeys != nil {
		return nil, fmt.Errorf("ca: %w: RootSigner and TPMKeys are exclusive", ErrInvalidConfig)
	}
	external := cfg.RootSigner != nil || cfg.TPMKeys != nil
	if cfg.KeyTTL > 0 && !external {
		cfg.RootTTL = cfg.KeyTTL
	}
	c := &CA{
		td:        cfg.TrustDomain,
		clock:     cfg.Clock,
		log:       cfg.Logger,
		jwtIssuer: cfg.JWTIssuer,
		dir:       cfg.Dir,
		x509TTL:   cfg.KeyTTL,
		jwtKeyTTL: cfg.JWTKeyTTL,
		onEvent:   cfg.OnEvent,
		tick:      cfg.TickInterval,
		// Set before the journal is read: it decides whether file-held
		// roots belong in it.
		rootSigner: cfg.RootSigner,
		external:   external,
		tpmKeys:    cfg.TPMKeys,
		tpmBase:    cfg.TPMHandle,
		rootTTL:    cfg.RootTTL,
	}
	if external {
		c.x509TTL = 0
	}
	if c.tick <= 0 {
		c.tick = time.Second
	}
	found, err := c.loadJournal()
	if err != nil {
		return nil, err
	}
	if !found {
		if err := c.loadLegacy(cfg); err != nil {
			return nil, err
		}
	}
	if cfg.TPMKeys != nil {
		if err := c.loadTPMRoots(cfg); err != nil {
			return nil, err
		}
	}
	if external {
		if cfg.RootSigner != nil {
			root, err := loadOrCreateRoot(cfg, cfg.RootSigner, TPMRootCertFile)
			if err != nil {
				return nil, err
			}
			c.root = root
			c.rootSigner = cfg.RootSigner
		}
		c.intermediateTTL = cfg.IntermediateTTL
		if c.intermediateTTL <= 0 {
			c.intermediateTTL = defaultIntermediateTTL
		}
		if err := c.RotateIntermediate(); err != nil {
			return nil, err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !found && (c.x509TTL > 0 || c.jwtKeyTTL > 0) {
		// Migrate the single-key layout in place: its keys are the
		// active ones, their life counted from now (a long-lived root
		// is cut to the configured ttl: leaves are clamped to it).
		now := c.clock()
		for _, a := range c.auths {
			if ttl := c.ttlOf(a.Kind); ttl > 0 {
				a.Start, a.Expires, a.Migrated = now, now.Add(ttl), true
				if a.cert != nil {
					a.Expires = minTime(a.Expires, a.cert.NotAfter)
				}
			}
		}
		if err := c.commit(); err != nil {
			return nil, fmt.Errorf("ca: migrate to %s: %w", JournalFile, err)
		}
		c.log.Info("CA keys now rotate: the existing keys are the active ones", "journal", JournalFile)
		return c, nil
	}
	if found && (len(c.needNew) > 0 || c.forgot) {
		// The operator removed a key pair (both halves) to get a new
		// key: make it, and write the journal without the removed keys.
		for _, kind := range c.needNew {
			if _, err := c.rotateLocked(kind, c.clock()); err != nil {
				return nil, err
			}
			c.log.Warn("created a new CA key in place of the removed one", "kind", kind)
		}
		c.needNew = nil
		if err := c.commit(); err != nil {
			return nil, fmt.Errorf("ca: %w", err)
		}
		return c, nil
	}
	if err := c.publish(); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	return c, nil
}

// loadLegacy loads (or creates) the single-key layout: ca_key.pem and
// ca_cert.pem (unless the root is TPM-held) and jwt_key.pem, as the active
// authorities.
func (c *CA) loadLegacy(cfg Config) error {
	if !c.external {
		k, r, err := loadOrCreateRootPair(cfg)
		if err != nil {
			return err
		}
		c.auths = append(c.auths, &authority{Kind: KindX509, ID: hex.EncodeToString(r.SubjectKeyId), State: StateActive,
			KeyFile: RootKeyFile, PubFile: RootCertFile, Start: r.NotBefore, Expires: r.NotAfter, key: k, cert: r})
	}
	jwtKey, err := loadOrCreateJWTKey(cfg.Dir, cfg.Logger)
	if err != nil {
		return err
	}
	kid, err := keyID(&jwtKey.PublicKey)
	if err != nil {
		return err
	}
	c.auths = append(c.auths, &authority{Kind: KindJWT, ID: kid, State: StateActive, KeyFile: JWTKeyFile, PubFile: JWTPublicKeyFile, key: jwtKey})
	return nil
}

// ensureDir creates dir 0700, or checks an existing one; either way the
// directory and all above it must pass safefs.CheckDir (owned by root or
// us, not writable by group or others; sticky directories above allowed).
func ensureDir(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("data dir %s: %w", dir, err)
	}
	st, err := os.Stat(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(abs, 0o700); err != nil {
			return fmt.Errorf("data dir %s: %w", dir, err)
		}
	case err != nil:
		return fmt.Errorf("data dir %s: %w", dir, err)
	case !st.IsDir():
		return fmt.Errorf("data dir %s: %w: not a directory", dir, ErrInvalidConfig)
	}
	if err := safefs.CheckDir(abs); err != nil {
		if errors.Is(err, safefs.ErrUnsafe) {
			return fmt.Errorf("data dir %s: %w: %w (it and every directory above it must be owned by root or uid %d and not writable by group or others: chown/chmod 0700 it)",
				dir, ErrUnsafeFile, err, os.Geteuid())
		}
		return fmt.Errorf("data dir %s: %w", dir, err)
	}
	return nil
}

// lockDir takes an exclusive flock on dir for the time LoadOrCreate writes
// to it, so two agents started at once on one data dir neither remove each
// other's temporary files nor both create keys.
func lockDir(dir string) (func(), error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("data dir %s: %w", dir, err)
	}
	if err := syscall.Flock(int(d.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = d.Close() // the lock error is the one to report
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("data dir %s: another process is loading or creating the CA in it at this moment", dir)
		}
		return nil, fmt.Errorf("data dir %s: lock: %w", dir, err)
	}
	return func() { _ = d.Close() }, nil // closing releases the lock
}

// readFile reads a regular file of at most maxFileSize bytes, refusing a
// symlink, a file owned by anyone but root or the effective uid, or one
// group or others may write (with private set: access at all). It never
// blocks on a FIFO. The checks are made on the open file, so they hold for
// what is read.
func readFile(path string, private bool) ([]byte, error) {
	f, err := safefs.OpenFile(path, private)
	if err != nil {
		if !errors.Is(err, safefs.ErrUnsafe) {
			return nil, err
		}
		if fi, lerr := os.Lstat(path); lerr == nil && !fi.Mode().IsRegular() && fi.Mode().Type() != fs.ModeSymlink {
			return nil, fmt.Errorf("%s: %w: not a regular file", path, ErrCorruptFile)
		}
		return nil, fmt.Errorf("%w: %w", ErrUnsafeFile, err)
	}
	defer func() { _ = f.Close() }() // read-only: nothing to lose on close
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
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

// parseKey parses a PKCS#8 P-256 private key. Errors name the file only,
// never its content.
func parseKey(path string, data []byte) (*ecdsa.PrivateKey, error) {
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

// newKey generates a P-256 key and its PKCS#8 PEM.
func newKey(path string) (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("key %s: generate: %w", path, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("key %s: encode: %w", path, err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// missingHalf is the error for a key pair of which only other exists.
func missingHalf(dir string, p keyPair, lost string) error {
	return fmt.Errorf("%s: %w: %s is missing but %s exists, so credentials were issued with the lost key; refusing to create a new one: restore %s from a backup, or remove %s too to create a new %s (%s)",
		dir, ErrCorruptFile, p.key, p.other, p.key, p.other, p.what, lost)
}

// loadOrCreateRootPair loads or creates the software root key and its
// certificate.
func loadOrCreateRootPair(cfg Config) (*ecdsa.PrivateKey, *x509.Certificate, error) {
	if err := recoverPair(cfg.Dir, rootPair, cfg.Logger); err != nil {
		return nil, nil, err
	}
	keyPath := filepath.Join(cfg.Dir, RootKeyFile)
	certPath := filepath.Join(cfg.Dir, RootCertFile)
	data, err := readFile(keyPath, true)
	if err == nil {
		key, err := parseKey(keyPath, data)
		if err != nil {
			return nil, nil, err
		}
		if _, err := os.Lstat(certPath); errors.Is(err, fs.ErrNotExist) {
			// Older versions wrote the key first: a crash left it alone.
			// A root for the same key verifies every SVID it signed.
			cfg.Logger.Warn("root certificate missing beside the CA key: creating one for the same key", "file", certPath)
		}
		root, err := loadOrCreateRoot(cfg, key, RootCertFile)
		if err != nil {
			return nil, nil, err
		}
		return key, root, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("key: %w", err)
	}
	if _, err := os.Lstat(certPath); !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, missingHalf(cfg.Dir, rootPair, "every SVID issued so far will stop verifying")
	}
	key, keyPEM, err := newKey(keyPath)
	if err != nil {
		return nil, nil, err
	}
	now := cfg.Clock()
	root, err := newRoot(cfg.TrustDomain, key, now, cfg.RootTTL)
	if err != nil {
		return nil, nil, err
	}
	if err := writePair(cfg.Dir, rootPair, keyPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw})); err != nil {
		return nil, nil, fmt.Errorf("root: %w", err)
	}
	cfg.Logger.Info("created key", "file", keyPath)
	cfg.Logger.Info("created root certificate", "file", certPath, "trust_domain", cfg.TrustDomain.Name(), "not_after", root.NotAfter)
	return key, root, nil
}

// loadOrCreateJWTKey loads or creates the JWT signing key and its public
// key file.
func loadOrCreateJWTKey(dir string, log *slog.Logger) (*ecdsa.PrivateKey, error) {
	if err := recoverPair(dir, jwtPair, log); err != nil {
		return nil, err
	}
	keyPath := filepath.Join(dir, JWTKeyFile)
	pubPath := filepath.Join(dir, JWTPublicKeyFile)
	data, err := readFile(keyPath, true)
	if errors.Is(err, fs.ErrNotExist) {
		if _, err := os.Lstat(pubPath); !errors.Is(err, fs.ErrNotExist) {
			return nil, missingHalf(dir, jwtPair, "every JWT-SVID issued so far will fail validation")
		}
		key, keyPEM, err := newKey(keyPath)
		if err != nil {
			return nil, err
		}
		pubPEM, err := publicPEM(key)
		if err != nil {
			return nil, err
		}
		if err := writePair(dir, jwtPair, keyPEM, pubPEM); err != nil {
			return nil, fmt.Errorf("jwt key: %w", err)
		}
		log.Info("created key", "file", keyPath)
		return key, nil
	}
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	key, err := parseKey(keyPath, data)
	if err != nil {
		return nil, err
	}
	pubData, err := readFile(pubPath, false)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// A data dir from a version without the public key file.
		pubPEM, err := publicPEM(key)
		if err != nil {
			return nil, err
		}
		if err := atomicfile.Write(pubPath, pubPEM, 0o644); err != nil {
			log.Warn("could not write the JWT public key file (a lost jwt_key.pem will not be detected)", "file", pubPath, "error", err)
		}
		return key, nil
	case err != nil:
		return nil, fmt.Errorf("jwt public key: %w", err)
	}
	block, _ := pem.Decode(pubData)
	var pub any
	if block != nil && block.Type == "PUBLIC KEY" {
		pub, err = x509.ParsePKIXPublicKey(block.Bytes)
	}
	if ep, ok := pub.(*ecdsa.PublicKey); block == nil || err != nil || !ok || !ep.Equal(key.Public()) {
		return nil, fmt.Errorf("jwt public key %s: %w: not the public key of %s: restore the %s that belongs with it, or remove both to create a new JWT signing key (every JWT-SVID issued so far will fail validation)",
			pubPath, ErrCorruptFile, JWTKeyFile, JWTKeyFile)
	}
	return key, nil
}

func publicPEM(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, fmt.Errorf("jwt public key: encode: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// writePair writes a new key pair so that a failure at any point (a full
// disk, a crash) leaves the data dir with the previous state of both files
// or the new state of both, never one half of each:
//  1. the key goes to KEY.new, then the other half to OTHER.new, each
//     written atomically (temporary file, fsync, rename, directory fsync);
//     a failure removes KEY.new and changes nothing else;
//  2. OTHER.new existing is the commit point: from there on recoverPair
//     completes an interrupted write at the next start;
//  3. KEY.new is renamed to KEY, OTHER.new to OTHER, and the dir fsynced.
func writePair(dir string, p keyPair, keyPEM, otherPEM []byte) error {
	keyNew := filepath.Join(dir, p.key+pendingSuffix)
	if err := atomicfile.Write(keyNew, keyPEM, 0o600); err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dir, p.other+pendingSuffix), otherPEM, 0o644); err != nil {
		if rerr := os.Remove(keyNew); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return err
	}
	return commitPair(dir, p, true)
}

// recoverPair finishes a writePair that passed its commit point and undoes
// one that did not, so the pair is whole before it is read.
func recoverPair(dir string, p keyPair, log *slog.Logger) error {
	keyNew := filepath.Join(dir, p.key+pendingSuffix)
	otherNew := filepath.Join(dir, p.other+pendingSuffix)
	keyPending, err := pending(keyNew, true)
	if err != nil {
		return err
	}
	otherPending, err := pending(otherNew, false)
	if err != nil {
		return err
	}
	switch {
	case otherPending:
		log.Warn("completing an interrupted write of a key pair", "key", p.key, "other", p.other)
		return commitPair(dir, p, keyPending)
	case keyPending:
		log.Warn("removing the half-written new key of an interrupted key pair write", "file", keyNew)
		if err := os.Remove(keyNew); err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
	}
	return nil
}

// pending reports whether the pending file path exists, refusing one that
// is not a regular file we or root own.
func pending(path string, private bool) (bool, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("data dir: %w", err)
	}
	if err := safefs.CheckFileInfo(path, fi, private); err != nil {
		return false, fmt.Errorf("%w: %w", ErrUnsafeFile, err)
	}
	return true, nil
}

// commitPair renames the pending halves over the pair (the key first, when
// its pending file is still there) and fsyncs the directory.
func commitPair(dir string, p keyPair, withKey bool) error {
	if withKey {
		if err := os.Rename(filepath.Join(dir, p.key+pendingSuffix), filepath.Join(dir, p.key)); err != nil {
			return fmt.Errorf("commit %s: %w", p.key, err)
		}
	}
	if err := os.Rename(filepath.Join(dir, p.other+pendingSuffix), filepath.Join(dir, p.other)); err != nil {
		return fmt.Errorf("commit %s: %w", p.other, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("commit %s: %w", p.other, err)
	}
	defer func() { _ = d.Close() }() // read-only handle
	if err := d.Sync(); err != nil {
		return fmt.Errorf("commit %s: fsync %s: %w", p.other, dir, err)
	}
	return nil
}

// loadOrCreateRoot loads the root certificate and checks that it is a CA
// for cfg.TrustDomain, self-signed by key; it creates a root when there is
// none or when the stored one is past 80% of its lifetime.
func loadOrCreateRoot(cfg Config, key crypto.Signer, file string) (*x509.Certificate, error) {
	path := filepath.Join(cfg.Dir, file)
	now := cfg.Clock()
	data, err := readFile(path, false)
	var old *x509.Certificate
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
		old = root
	case errors.Is(err, fs.ErrNotExist):
	default:
		return nil, fmt.Errorf("root: %w", err)
	}
	root, err := newRoot(cfg.TrustDomain, key, now, cfg.RootTTL)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}), 0o644); err != nil {
		if old != nil && now.Before(old.NotAfter) {
			// The write is atomic: the stored root is whole and still
			// valid. Serve with it; the next start tries again.
			cfg.Logger.Error("could not replace the aging root certificate: keeping the current one until the next start",
				"file", path, "not_after", old.NotAfter, "error", err)
			return old, nil
		}
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

// wallNow is the wall-clock time without its monotonic reading: every
// expiry decision compares against certificate times, which are wall-clock,
// and the monotonic clock stops while the machine is suspended.
func wallNow() time.Time { return time.Now().Round(0) }
