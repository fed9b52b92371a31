package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"time"

	"github.com/nodeward/nodeward/internal/atomicfile"
)

// TPMKeys is the TPM as the CA uses it for TPM-held root keys (Config.TPMKeys):
// non-exportable ECC P-256 signing keys persisted at handles. The agent
// adapts attestors/tpm to it.
type TPMKeys interface {
	// LoadOrCreateSigningKey loads the key at handle, or creates one there
	// when the handle is empty (the first root).
	LoadOrCreateSigningKey(ctx context.Context, handle uint32) (crypto.Signer, error)
	// LoadSigningKey loads the key at handle; it returns a nil signer and
	// no error when the handle is empty. It never creates a key.
	LoadSigningKey(ctx context.Context, handle uint32) (crypto.Signer, error)
	// CreateSigningKey creates a new key at handle; an occupied handle is
	// an error, never overwritten.
	CreateSigningKey(ctx context.Context, handle uint32) (crypto.Signer, error)
	// EvictSigningKey removes the key at handle from the TPM; an empty
	// handle is no error. An object there that is not such a key is an
	// error wrapping ErrForeignKey, and stays.
	EvictSigningKey(ctx context.Context, handle uint32) error
}

// ErrForeignKey: the object at a TPM handle is not a key this CA made.
var ErrForeignKey = errors.New("not a signing key of this CA")

// persistentHandleType is the top byte of a TPM persistent handle
// (TPM_HT_PERSISTENT, 0x81xxxxxx).
const persistentHandleType = 0x81

// tpmTimeout bounds one TPM root lifecycle step (a few TPM commands).
const tpmTimeout = 30 * time.Second

// TPMRootCertPrefix names the certificate file of a rotated TPM-held root:
// ca_cert_tpm.<id>.pem (the first root keeps TPMRootCertFile).
const TPMRootCertPrefix = "ca_cert_tpm."

func tpmContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), tpmTimeout)
}

// findTPM returns the TPM-held root in state (c.mu held).
func (c *CA) findTPM(state string) *authority {
	for _, a := range c.auths {
		if a.TPMHandle != 0 && a.State == state {
			return a
		}
	}
	return nil
}

// publicOnly is a crypto.Signer that only has a public key: what parseRoot
// checks a retired TPM root's certificate against (its key is not needed).
type publicOnly struct{ pub *ecdsa.PublicKey }

func (p publicOnly) Public() crypto.PublicKey { return p.pub }

func (publicOnly) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("a retired root signs nothing")
}

// loadTPMRoots loads the TPM-held roots named in the journal (their keys
// from the TPM, their certificates from the data dir), or, when there are
// none yet, the single TPM root of earlier versions at the first handle
// (created there when the TPM has none), which becomes the active one.
func (c *CA) loadTPMRoots(cfg Config) error {
	ctx, cancel := tpmContext()
	defer cancel()
	rc := cfg
	var active *authority
	named := 0
	handles := map[uint32]bool{}
	kept := make([]*authority, 0, len(c.auths))
	for _, a := range c.auths {
		if a.TPMHandle == 0 {
			kept = append(kept, a)
			continue
		}
		named++
		if a.TPMHandle>>24 != persistentHandleType || handles[a.TPMHandle] {
			return fmt.Errorf("journal %s: %w: TPM root %s at %#x: not a persistent handle, or one named twice", filepath.Join(c.dir, JournalFile), ErrCorruptFile, a.ID, a.TPMHandle)
		}
		handles[a.TPMHandle] = true
		path := filepath.Join(c.dir, a.PubFile)
		switch a.State {
		case StateActive, StatePrepared:
			s, err := c.tpmKeys.LoadSigningKey(ctx, a.TPMHandle)
			if err != nil {
				return fmt.Errorf("TPM root %s at %#x (named in %s): %w", a.ID, a.TPMHandle, JournalFile, err)
			}
			if s == nil && a.State == StateActive {
				return fmt.Errorf("%s: %w: the TPM holds no key at %#x, where %s says the active root %s is (was the TPM cleared?): every SVID it signed stops verifying; move %s aside to start with a new root",
					c.dir, ErrCorruptFile, a.TPMHandle, JournalFile, a.ID, JournalFile)
			}
			if s == nil {
				c.log.Warn("the TPM no longer holds the key of the prepared TPM root: forgetting it (start the rotation again)", "id", a.ID, "tpm_handle", fmt.Sprintf("%#x", a.TPMHandle))
				c.dropped = append(c.dropped, a)
				c.forgot = true
				continue
			}
			a.signer, rc.RootSigner = s, s
			var root *x509.Certificate
			if a.State == StateActive {
				// Renewed for the same key past 80% of its life.
				root, err = loadOrCreateRoot(rc, s, a.PubFile)
			} else {
				var data []byte
				if data, err = readFile(path, false); err == nil {
					root, err = parseRoot(path, data, rc, s)
				}
			}
			if err != nil {
				return fmt.Errorf("TPM root %s: %w", a.ID, err)
			}
			a.cert = root
			if a.State == StateActive {
				if active != nil {
					return fmt.Errorf("journal %s: %w: two active TPM roots", filepath.Join(c.dir, JournalFile), ErrCorruptFile)
				}
				a.Expires, active = root.NotAfter, a
			}
		default:
			data, err := readFile(path, false)
			if err != nil {
				return fmt.Errorf("TPM root %s (named in %s): %w", a.ID, JournalFile, err)
			}
			block, _ := pem.Decode(data)
			if block == nil {
				return fmt.Errorf("root %s: %w: no CERTIFICATE PEM block", path, ErrCorruptFile)
			}
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return fmt.Errorf("root %s: %w: %w", path, ErrCorruptFile, err)
			}
			pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
			if !ok {
				return fmt.Errorf("root %s: %w: not an ECDSA key", path, ErrCorruptFile)
			}
			if a.cert, err = parseRoot(path, data, rc, publicOnly{pub}); err != nil {
				return err
			}
		}
		if a.ID != hex.EncodeToString(a.cert.SubjectKeyId) {
			return fmt.Errorf("journal %s: %w: %s does not hold authority %s", filepath.Join(c.dir, JournalFile), ErrCorruptFile, a.PubFile, a.ID)
		}
		kept = append(kept, a)
	}
	if named > 0 && active == nil {
		return fmt.Errorf("journal %s: %w: it names TPM roots but none is active", filepath.Join(c.dir, JournalFile), ErrCorruptFile)
	}
	if active == nil {
		// The single TPM root: journaled with the next commit.
		s, err := c.tpmKeys.LoadOrCreateSigningKey(ctx, c.tpmBase)
		if err != nil {
			return fmt.Errorf("TPM root key at %#x: %w", c.tpmBase, err)
		}
		rc.RootSigner = s
		root, err := loadOrCreateRoot(rc, s, TPMRootCertFile)
		if err != nil {
			return err
		}
		active = &authority{Kind: KindX509, ID: hex.EncodeToString(root.SubjectKeyId), State: StateActive, TPMHandle: c.tpmBase,
			PubFile: TPMRootCertFile, Start: root.NotBefore, Expires: root.NotAfter, cert: root, signer: s}
		kept = append([]*authority{active}, kept...)
	}
	c.auths = kept
	c.root, c.rootSigner = active.cert, active.signer
	return nil
}

// RotateTPMRoot starts a rotation of the TPM-held root (`nodeward ca rotate
// --tpm-root`): a new key is created in the TPM at the other of the two
// root handles and its self-signed root certificate is written and
// published in the bundle at once (prepared). After activateAfter
// (negative: twice the bundle refresh hint) Run activates it: a new
// intermediate signed by it mints every later SVID, and the old root is
// retired, published until the last intermediate it signed expires, then
// dropped and its key evicted from the TPM. Every step is journaled, so a
// restart continues where it was. A rotation is refused while a previous
// one is not finished (a prepared or retired TPM root exists).
func (c *CA) RotateTPMRoot(activateAfter time.Duration) (string, error) {
	if c.tpmKeys == nil {
		return "", fmt.Errorf("rotate TPM root: %w: the root key is not held in the TPM (ca.key is not tpm): use `nodeward ca rotate`", ErrInvalidConfig)
	}
	c.tpmMu.Lock()
	defer c.tpmMu.Unlock()
	ctx, cancel := tpmContext()
	defer cancel()
	if err := c.evictPending(ctx); err != nil {
		c.log.Warn("could not evict a dropped TPM root key", "error", err)
	}
	c.mu.Lock()
	if activateAfter < 0 {
		activateAfter = 2 * c.Snapshot().RefreshHint
	}
	act := c.findTPM(StateActive)
	for _, a := range c.auths {
		if a.TPMHandle == 0 || a.State == StateActive {
			continue
		}
		err := fmt.Errorf("rotate TPM root: the previous root %s is %s and published until %s (SVIDs chained to it): rotate again after that, or taint it first (`nodeward ca taint %s`)",
			a.ID, a.State, a.DropAt.UTC().Format(time.RFC3339), a.ID)
		if a.State == StatePrepared {
			err = fmt.Errorf("rotate TPM root: a rotation is in progress: root %s is prepared and becomes active at %s", a.ID, a.ActivateAt.UTC().Format(time.RFC3339))
		}
		c.mu.Unlock()
		return "", err
	}
	if act == nil {
		c.mu.Unlock()
		return "", fmt.Errorf("rotate TPM root: %w: no active TPM root", ErrInvalidConfig)
	}
	h := c.tpmBase
	if act.TPMHandle == h {
		h = c.tpmBase + 1
	}
	pending := slices.Contains(c.tpmEvict, h)
	c.mu.Unlock()
	if h>>24 != persistentHandleType {
		return "", fmt.Errorf("rotate TPM root: %w: %#x (ca.tpm_handle + 1) is not a persistent handle: set ca.tpm_handle to the first of two free persistent handles", ErrInvalidConfig, h)
	}
	if pending {
		return "", fmt.Errorf("rotate TPM root: the key of an earlier root at %#x is not evicted yet (see the log); try again", h)
	}
	// The handle must be free: a key there is not one the journal names.
	if s, err := c.tpmKeys.LoadSigningKey(ctx, h); err != nil || s != nil {
		return "", fmt.Errorf("rotate TPM root: persistent handle %#x is in use by an object %s does not name (%v): evict it (tpm2_evictcontrol -C o -c %#x) if it is a leftover, or set ca.tpm_handle to the first of two free handles",
			h, JournalFile, err, h)
	}
	// Journal the handle as one to evict before creating the key there: a
	// crash between the two leaves no key behind after the next start.
	c.mu.Lock()
	saved := c.saveAuths()
	c.tpmEvict = append(c.tpmEvict, h)
	if err := c.commit(); err != nil {
		c.restoreAuths(saved)
		c.mu.Unlock()
		return "", fmt.Errorf("rotate TPM root: %w", err)
	}
	c.mu.Unlock()
	signer, err := c.tpmKeys.CreateSigningKey(ctx, h)
	if err != nil {
		return "", fmt.Errorf("rotate TPM root: new key at %#x: %w", h, err)
	}
	now := c.clock()
	root, err := newRoot(c.td, signer, now, c.rootTTL)
	if err != nil {
		return "", fmt.Errorf("rotate TPM root: %w", err)
	}
	a := &authority{Kind: KindX509, ID: hex.EncodeToString(root.SubjectKeyId), State: StatePrepared, TPMHandle: h,
		Start: now, Expires: root.NotAfter, ActivateAt: now.Add(activateAfter), cert: root, signer: signer}
	a.PubFile = TPMRootCertPrefix + a.ID + ".pem"
	if err := atomicfile.Write(filepath.Join(c.dir, a.PubFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}), 0o644); err != nil {
		return "", fmt.Errorf("rotate TPM root: %w", err)
	}
	c.mu.Lock()
	saved = c.saveAuths()
	c.tpmEvict = slices.DeleteFunc(c.tpmEvict, func(x uint32) bool { return x == h })
	c.auths = append(c.auths, a)
	c.event("prepare", a)
	if err := c.commit(); err != nil {
		c.restoreAuths(saved)
		c.mu.Unlock()
		return "", fmt.Errorf("rotate TPM root: %w", err)
	}
	c.mu.Unlock()
	if activateAfter <= 0 {
		if err := c.activateTPMRoot(); err != nil {
			return "", fmt.Errorf("rotate TPM root: prepared root %s; its activation failed and is retried every second: %w", a.ID, err)
		}
		return fmt.Sprintf("rotated: new active TPM root %s (handle %#x); the previous root stays published until the last SVID chained to it expires", a.ID, h), nil
	}
	return fmt.Sprintf("prepared: new TPM root %s (handle %#x) is published in the bundle now and becomes active at %s; the previous root stays published until the last SVID chained to it expires",
		a.ID, h, a.ActivateAt.UTC().Format(time.RFC3339)), nil
}

// activateTPMRoot makes the prepared TPM root the active one (tpmMu held):
// an intermediate signed by it first (one TPM signature), then the journal,
// then the issuer swap. The old root is retired until the expiry of the
// last intermediate it signed, which bounds every SVID chained to it.
func (c *CA) activateTPMRoot() error {
	c.mu.Lock()
	prep := c.findTPM(StatePrepared)
	c.mu.Unlock()
	if prep == nil {
		return nil
	}
	iss, err := c.newIntermediate(prep.cert, prep.signer)
	if err != nil {
		return fmt.Errorf("activate TPM root %s: %w", prep.ID, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if prep.State != StatePrepared || !slices.Contains(c.auths, prep) {
		return nil // tainted meanwhile: the intermediate is not used
	}
	saved := c.saveAuths()
	oldRoot, oldSigner := c.root, c.rootSigner
	dropAt := c.clock()
	if cur := c.issuer.Load(); cur != nil && cur.notAfter.After(dropAt) {
		dropAt = cur.notAfter
	}
	act := c.findTPM(StateActive)
	prep.State = StateActive
	c.event("activate", prep)
	if act != nil {
		act.State, act.DropAt = StateRetired, dropAt
		c.event("retire", act)
	}
	c.root, c.rootSigner = prep.cert, prep.signer
	if err := c.commit(); err != nil {
		c.restoreAuths(saved)
		c.root, c.rootSigner = oldRoot, oldSigner
		return fmt.Errorf("activate TPM root %s: %w", prep.ID, err)
	}
	c.issuer.Store(iss)
	return nil
}

// advanceTPM makes the TPM root steps due now: activate a prepared root at
// its time, drop a retired root at its DropAt (a tainted one at once), and
// evict the keys of dropped roots from the TPM. Run calls it every tick;
// without a due step it touches no TPM.
func (c *CA) advanceTPM() error {
	if c.tpmKeys == nil {
		return nil
	}
	c.tpmMu.Lock()
	defer c.tpmMu.Unlock()
	var errs []error
	now := c.clock()
	c.mu.Lock()
	prep := c.findTPM(StatePrepared)
	c.mu.Unlock()
	if prep != nil && !now.Before(prep.ActivateAt) {
		errs = append(errs, c.activateTPMRoot())
	}
	c.mu.Lock()
	var drop []*authority
	for _, a := range c.auths {
		if a.TPMHandle != 0 && (a.State == StateTainted || (a.State == StateRetired && !now.Before(a.DropAt))) {
			drop = append(drop, a)
		}
	}
	if len(drop) > 0 {
		saved := c.saveAuths()
		for _, a := range drop {
			c.drop(a)
		}
		if err := c.commit(); err != nil {
			c.restoreAuths(saved)
			errs = append(errs, err)
		}
	}
	pending := len(c.tpmEvict) > 0
	c.mu.Unlock()
	if pending {
		ctx, cancel := tpmContext()
		defer cancel()
		errs = append(errs, c.evictPending(ctx))
	}
	return errors.Join(errs...)
}

// evictPending evicts the keys at the handles of c.tpmEvict from the TPM
// (tpmMu held); the handles done leave the journal. A handle some TPM root
// of the set still uses is never evicted.
func (c *CA) evictPending(ctx context.Context) error {
	c.mu.Lock()
	handles := slices.Clone(c.tpmEvict)
	inUse := map[uint32]bool{}
	for _, a := range c.auths {
		if a.TPMHandle != 0 {
			inUse[a.TPMHandle] = true
		}
	}
	c.mu.Unlock()
	if len(handles) == 0 {
		return nil
	}
	var errs []error
	done := map[uint32]bool{}
	for _, h := range handles {
		if inUse[h] {
			done[h] = true
			continue
		}
		err := c.tpmKeys.EvictSigningKey(ctx, h)
		switch {
		case errors.Is(err, ErrForeignKey):
			c.log.Warn("not evicting the object at a dropped TPM root's handle: it is not a signing key of this CA", "tpm_handle", fmt.Sprintf("%#x", h), "error", err)
		case err != nil:
			errs = append(errs, fmt.Errorf("evict TPM key at %#x: %w", h, err))
			continue
		default:
			c.log.Info("evicted a dropped TPM root key", "tpm_handle", fmt.Sprintf("%#x", h))
		}
		done[h] = true
	}
	if len(done) > 0 {
		c.mu.Lock()
		saved := c.saveAuths()
		c.tpmEvict = slices.DeleteFunc(c.tpmEvict, func(h uint32) bool { return done[h] })
		if err := c.commit(); err != nil {
			c.restoreAuths(saved)
			errs = append(errs, err)
		}
		c.mu.Unlock()
	}
	return errors.Join(errs...)
}
