package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"

	"github.com/nodeward/nodeward/internal/atomicfile"
)

// JournalFile names, in the data directory, which key is in which state
// (JSON, mode 0600, written atomically). With it present the key set is
// loaded from it; without it the single-key layout (ca_key.pem, jwt_key.pem)
// is loaded and, when rotation is on, migrated in place as the active keys.
const JournalFile = "ca_keys.json"

// Key kinds (KeyEvent.Kind, AuthorityStatus.Kind).
const (
	KindX509 = "x509"
	KindJWT  = "jwt"
)

// Key states.
const (
	StatePrepared = "prepared" // published in the bundle, signs nothing yet
	StateActive   = "active"   // signs every new SVID of its kind
	StateRetired  = "retired"  // published until the last SVID it signed expired
	StateTainted  = "tainted"  // removed from the bundle; SVIDs it signed are re-minted
)

// defaultRefreshHint is the bundle refresh hint of a CA whose keys do not
// rotate.
const defaultRefreshHint = 5 * time.Minute

// BundleSnapshot is one immutable, consistent view of the trust domain's
// published keys.
type BundleSnapshot struct {
	Sequence    uint64              // increases on every change (spiffe_sequence)
	X509        []*x509.Certificate // every published root: prepared + active + retired, not tainted
	X509DER     []byte              // concatenated DER of X509
	JWKS        []byte              // JWKS (use "jwt-svid") of every published JWT key
	Bundle      *spiffebundle.Bundle
	RefreshHint time.Duration
}

// keySet is what the hot path reads: the snapshot, its change channel and
// lookup sets of the published authorities.
type keySet struct {
	snap     *BundleSnapshot
	changed  chan struct{}
	oidcJWKS []byte
	skis     [][]byte // SubjectKeyIds of the published roots
	kids     map[string]bool
}

// KeyEvent is a lifecycle step, for the audit trail and logs. It holds no
// key material.
type KeyEvent struct {
	Action  string // prepare, activate, retire, drop, taint
	Kind    string // KindX509 or KindJWT
	ID      string // the authority id: root SubjectKeyId (hex) or JWT kid
	Expires time.Time
}

// AuthorityStatus is one authority's state for status and metrics.
type AuthorityStatus struct {
	Kind    string    `json:"kind"`
	ID      string    `json:"id"`
	Serial  string    `json:"serial,omitempty"` // root serial (hex)
	State   string    `json:"state"`
	Expires time.Time `json:"expires"`
	// TPM-held roots only: the persistent handle (hex), when a prepared
	// root becomes active, and when a retired one leaves the bundle.
	TPMHandle   string     `json:"tpm_handle,omitempty"`
	ActivatesAt *time.Time `json:"activates_at,omitempty"`
	DropsAt     *time.Time `json:"drops_at,omitempty"`
}

// authority is one key of the set, as journaled.
type authority struct {
	Kind     string    `json:"kind"`
	ID       string    `json:"id"`
	State    string    `json:"state"`
	KeyFile  string    `json:"key_file"`
	PubFile  string    `json:"pub_file"` // the certificate or public key
	Start    time.Time `json:"start"`
	Expires  time.Time `json:"expires"`
	Migrated bool      `json:"migrated,omitempty"`
	// A TPM-held root (tpmroot.go) has no key file: its key is persisted
	// in the TPM at TPMHandle. A prepared one becomes active at
	// ActivateAt; a retired one is dropped at DropAt (the expiry of the
	// last intermediate it signed).
	TPMHandle  uint32    `json:"tpm_handle,omitempty"`
	ActivateAt time.Time `json:"activate_at,omitzero"`
	DropAt     time.Time `json:"drop_at,omitzero"`

	key     *ecdsa.PrivateKey
	cert    *x509.Certificate // x509 only
	signer  crypto.Signer     // TPM-held root (active or prepared)
	removed bool              // both files gone at load: forgotten
}

type journal struct {
	Version     int          `json:"version"`
	Sequence    uint64       `json:"sequence"`
	Authorities []*authority `json:"authorities"`
	// TPMEvict are persistent handles of TPM root keys to evict: dropped
	// roots, and a key whose creation was interrupted.
	TPMEvict []uint32 `json:"tpm_evict,omitempty"`
}

// Snapshot returns the current bundle snapshot (lock-free).
func (c *CA) Snapshot() *BundleSnapshot { return c.set.Load().snap }

// Changed returns a channel closed at the next snapshot change; call it
// again after it fires.
func (c *CA) Changed() <-chan struct{} { return c.set.Load().changed }

// Tainted reports whether chain (leaf first, as minted) was signed by an
// authority no longer published (tainted or dropped): the SVID must be
// re-minted now.
func (c *CA) Tainted(chain []*x509.Certificate) bool {
	if len(chain) == 0 {
		return false
	}
	aki := chain[len(chain)-1].AuthorityKeyId
	for _, ski := range c.set.Load().skis {
		if bytes.Equal(ski, aki) {
			return false
		}
	}
	return true
}

// JWTKeyTainted reports whether JWT-SVIDs with kid must be dropped: the key
// is not (or no longer) published.
func (c *CA) JWTKeyTainted(kid string) bool { return !c.set.Load().kids[kid] }

// Authorities returns every authority's kind, id, state and expiry.
func (c *CA) Authorities() []AuthorityStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]AuthorityStatus, 0, len(c.auths)+1)
	if c.rootSigner != nil && c.tpmKeys == nil {
		out = append(out, AuthorityStatus{Kind: KindX509, ID: hex.EncodeToString(c.root.SubjectKeyId), Serial: c.root.SerialNumber.Text(16), State: StateActive, Expires: c.root.NotAfter})
	}
	for _, a := range c.auths {
		s := AuthorityStatus{Kind: a.Kind, ID: a.ID, State: a.State, Expires: a.Expires}
		if a.cert != nil {
			s.Serial = a.cert.SerialNumber.Text(16)
		}
		if a.TPMHandle != 0 {
			s.TPMHandle = fmt.Sprintf("%#x", a.TPMHandle)
			if a.State == StatePrepared {
				t := a.ActivateAt
				s.ActivatesAt = &t
			}
			if a.State == StateRetired {
				t := a.DropAt
				s.DropsAt = &t
			}
		}
		out = append(out, s)
	}
	return out
}

// Run drives the key lifecycle on the clock until ctx is done: it prepares,
// activates, retires and drops keys, and applies operator requests
// (RequestFile). With neither kind rotating it only applies requests.
func (c *CA) Run(ctx context.Context) error {
	t := time.NewTicker(c.tick)
	defer t.Stop()
	for {
		if err := c.applyRequest(); err != nil {
			c.log.Error("CA request", "error", err)
		}
		if err := c.Advance(); err != nil {
			c.log.Error("CA key lifecycle", "error", err)
		}
		if err := c.advanceTPM(); err != nil {
			c.log.Error("CA TPM root lifecycle", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Advance makes every lifecycle step due at the clock's current time. Run
// calls it every tick; tests call it after moving their clock.
func (c *CA) Advance() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.clock()
	saved := c.saveAuths()
	changed := false
	var errs []error
	for _, kind := range c.kinds() {
		ch, err := c.advanceKind(kind, now)
		changed = changed || ch
		errs = append(errs, err)
	}
	if changed {
		if err := c.commit(); err != nil {
			c.restoreAuths(saved)
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// kinds are the rotating key kinds.
func (c *CA) kinds() []string {
	var ks []string
	if c.x509TTL > 0 && !c.external {
		ks = append(ks, KindX509)
	}
	if c.jwtKeyTTL > 0 {
		ks = append(ks, KindJWT)
	}
	return ks
}

func (c *CA) ttlOf(kind string) time.Duration {
	if kind == KindX509 {
		return c.x509TTL
	}
	return c.jwtKeyTTL
}

func (c *CA) find(kind, state string) *authority {
	for _, a := range c.auths {
		if a.Kind == kind && a.State == state {
			return a
		}
	}
	return nil
}

// advanceKind is one lifecycle pass over one kind (c.mu held). The active
// key A lives from A.Start to A.Expires: the next key is prepared (and
// published) at half of that, and activated at 5/6, or later if it was
// prepared late (it is published at least a sixth of a life before it
// signs), unless A is about to expire. A retired or tainted key is dropped
// at its expiry, when nothing it signed is valid any more (leaves never
// outlive their signing key's Expires).
func (c *CA) advanceKind(kind string, now time.Time) (bool, error) {
	changed := false
	for _, a := range append([]*authority(nil), c.auths...) {
		if a.Kind == kind && (a.State == StateRetired || a.State == StateTainted) && !now.Before(a.Expires) {
			c.drop(a)
			changed = true
		}
	}
	act := c.find(kind, StateActive)
	if act == nil {
		// Every key of the kind is gone (tainted and dropped, or the
		// active one expired away): make one now.
		if _, err := c.rotateLocked(kind, now); err != nil {
			return changed, err
		}
		return true, nil
	}
	life := act.Expires.Sub(act.Start)
	prep := c.find(kind, StatePrepared)
	if prep == nil && !now.Before(act.Start.Add(life/2)) {
		a, err := c.newAuthority(kind, now, StatePrepared)
		if err != nil {
			return changed, err
		}
		c.auths = append(c.auths, a)
		c.event("prepare", a)
		prep, changed = a, true
	}
	if prep != nil {
		due := act.Start.Add(life / 6 * 5)
		if lead := prep.Start.Add(life / 6); lead.After(due) {
			due = lead
		}
		if !now.Before(due) || act.Expires.Sub(now) < life/12 {
			c.activate(prep, act)
			changed = true
		}
	}
	return changed, nil
}

// activate makes next the active key and retires old (c.mu held).
func (c *CA) activate(next, old *authority) {
	next.State = StateActive
	c.event("activate", next)
	if old != nil {
		old.State = StateRetired
		c.event("retire", old)
	}
}

// drop removes a from the set and its files from the data dir (c.mu held).
// The journal is committed by the caller; files are removed after, so a
// crash leaves unreferenced files, never a reference to a missing key.
func (c *CA) drop(a *authority) {
	out := c.auths[:0]
	for _, b := range c.auths {
		if b != a {
			out = append(out, b)
		}
	}
	c.auths = out
	c.dropped = append(c.dropped, a)
	if a.TPMHandle != 0 {
		c.tpmEvict = append(c.tpmEvict, a.TPMHandle)
	}
	c.event("drop", a)
}

func (c *CA) event(action string, a *authority) {
	c.log.Info("CA key "+action, "kind", a.Kind, "id", a.ID, "expires", a.Expires)
	if c.onEvent != nil {
		c.onEvent(KeyEvent{Action: action, Kind: a.Kind, ID: a.ID, Expires: a.Expires})
	}
}

// newAuthority creates a key (and for X.509 its root), writes the pair
// both-or-neither, and returns it in state (not yet journaled).
func (c *CA) newAuthority(kind string, now time.Time, state string) (*authority, error) {
	ttl := c.ttlOf(kind)
	if ttl <= 0 {
		ttl = defaultRootTTL // rotation off: a key kept for good
	}
	a := &authority{Kind: kind, State: state, Start: now}
	key, keyPEM, err := newKey(kind + " key")
	if err != nil {
		return nil, err
	}
	a.key = key
	var otherPEM []byte
	if kind == KindX509 {
		root, err := newRoot(c.td, key, now, ttl)
		if err != nil {
			return nil, err
		}
		a.cert, a.ID, a.Expires = root, hex.EncodeToString(root.SubjectKeyId), root.NotAfter
		a.KeyFile, a.PubFile = "ca_key."+a.ID+".pem", "ca_cert."+a.ID+".pem"
		otherPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw})
	} else {
		if a.ID, err = keyID(&key.PublicKey); err != nil {
			return nil, err
		}
		a.Expires = now.Add(ttl)
		a.KeyFile, a.PubFile = "jwt_key."+a.ID+".pem", "jwt_pub."+a.ID+".pem"
		if otherPEM, err = publicPEM(key); err != nil {
			return nil, err
		}
	}
	p := keyPair{key: a.KeyFile, other: a.PubFile, what: kind + " key"}
	if err := writePair(c.dir, p, keyPEM, otherPEM); err != nil {
		return nil, fmt.Errorf("new %s key: %w", kind, err)
	}
	return a, nil
}

// rotateLocked prepares and activates a new key of kind at once; a prepared
// key (possibly exposed with the active one) is dropped (c.mu held).
func (c *CA) rotateLocked(kind string, now time.Time) (*authority, error) {
	a, err := c.newAuthority(kind, now, StatePrepared)
	if err != nil {
		return nil, err
	}
	if p := c.find(kind, StatePrepared); p != nil {
		c.drop(p)
	}
	c.auths = append(c.auths, a)
	c.event("prepare", a)
	c.activate(a, c.find(kind, StateActive))
	return a, nil
}

// Rotate prepares and activates the next key of kind (KindX509 or KindJWT)
// at once, for a suspected compromise; the old key is retired (still
// published: Taint it to drop it). A TPM-held root is not rotated here.
func (c *CA) Rotate(kind string) error {
	if kind != KindX509 && kind != KindJWT {
		return fmt.Errorf("rotate: %w: unknown key kind %q", ErrInvalidConfig, kind)
	}
	if kind == KindX509 && c.external {
		return fmt.Errorf("rotate: %w: the root key is held in the TPM; it is not rotated by this command: use `nodeward ca rotate --tpm-root`", ErrInvalidConfig)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ttlOf(kind) <= 0 {
		return fmt.Errorf("rotate: %w: %s key rotation is off (no ca ttl)", ErrInvalidConfig, kind)
	}
	saved := c.saveAuths()
	if _, err := c.rotateLocked(kind, c.clock()); err != nil {
		c.restoreAuths(saved)
		return err
	}
	if err := c.commit(); err != nil {
		c.restoreAuths(saved)
		return err
	}
	return nil
}

// ErrNotFound: Taint named no retired or prepared authority.
var ErrNotFound = errors.New("no such authority")

// Taint marks the authority of kind named by ref (its id, its root serial
// in hex, or the JWT kid) tainted: it is removed from the bundle at once and
// Tainted/JWTKeyTainted report every SVID it signed. The active key cannot
// be tainted: Rotate first.
func (c *CA) Taint(kind, ref string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	ref = strings.TrimSpace(ref)
	hexRef := strings.TrimPrefix(strings.ReplaceAll(strings.ToLower(ref), ":", ""), "0x")
	for _, a := range c.auths {
		if a.Kind != kind {
			continue
		}
		// A kid is case-sensitive base64url; root ids and serials are hex.
		match := a.ID == ref
		if a.cert != nil && (a.ID == hexRef || a.cert.SerialNumber.Text(16) == strings.TrimLeft(hexRef, "0")) {
			match = true
		}
		if !match {
			continue
		}
		switch a.State {
		case StateActive:
			return fmt.Errorf("taint %s %s: it is the active key: run rotate first, then taint it", kind, a.ID)
		case StateTainted:
			return nil
		}
		saved := c.saveAuths()
		a.State = StateTainted
		c.event("taint", a)
		if err := c.commit(); err != nil {
			c.restoreAuths(saved)
			return err
		}
		return nil
	}
	return fmt.Errorf("taint %s %q: %w", kind, ref, ErrNotFound)
}

// savedAuths is a copy of the key set (saveAuths).
type savedAuths struct {
	auths []authority
	evict []uint32
}

// saveAuths copies the key set so a failed commit can restore it.
func (c *CA) saveAuths() savedAuths {
	out := savedAuths{auths: make([]authority, len(c.auths)), evict: append([]uint32(nil), c.tpmEvict...)}
	for i, a := range c.auths {
		out.auths[i] = *a
	}
	return out
}

// restoreAuths undoes the in-memory steps since saveAuths: nothing of them
// reached the journal, so the next pass makes them again.
func (c *CA) restoreAuths(saved savedAuths) {
	c.auths = c.auths[:0:0]
	for i := range saved.auths {
		a := saved.auths[i]
		c.auths = append(c.auths, &a)
	}
	c.tpmEvict = saved.evict
	c.dropped = nil
}

// commit writes the journal, publishes a new snapshot (closing the old
// Changed channel), swaps the active signers and removes dropped keys'
// files (c.mu held). On a failed journal write nothing is published.
func (c *CA) commit() error {
	c.sequence++
	if c.x509TTL > 0 || c.jwtKeyTTL > 0 || len(c.auths) > 0 {
		j := journal{Version: 1, Sequence: c.sequence, Authorities: c.auths, TPMEvict: c.tpmEvict}
		data, err := json.MarshalIndent(j, "", "  ")
		if err != nil {
			return fmt.Errorf("journal: %w", err)
		}
		if err := atomicfile.Write(filepath.Join(c.dir, JournalFile), append(data, '\n'), 0o600); err != nil {
			c.sequence--
			return fmt.Errorf("journal: %w", err)
		}
	}
	for _, a := range c.dropped {
		for _, f := range []string{a.KeyFile, a.PubFile} {
			if f == "" {
				continue // a TPM-held root has no key file
			}
			if err := os.Remove(filepath.Join(c.dir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				c.log.Warn("could not remove a dropped key's file", "file", f, "error", err)
			}
		}
	}
	c.dropped = nil
	return c.publish()
}

// publish builds the snapshot and signers from c.auths (c.mu held).
func (c *CA) publish() error {
	ks := &keySet{changed: make(chan struct{}), kids: map[string]bool{}}
	snap := &BundleSnapshot{Sequence: c.sequence, RefreshHint: defaultRefreshHint}
	for _, ttl := range []time.Duration{c.x509TTL, c.jwtKeyTTL} {
		if ttl > 0 && ttl/10 < snap.RefreshHint {
			snap.RefreshHint = max(ttl/10, time.Second)
		}
	}
	b := spiffebundle.New(c.td)
	var keys, oidc []jwk
	if c.root != nil && c.tpmKeys == nil {
		snap.X509 = append(snap.X509, c.root) // RootSigner: not journaled
	}
	for _, a := range c.auths {
		if a.State == StateTainted {
			continue
		}
		if a.Kind == KindX509 {
			snap.X509 = append(snap.X509, a.cert)
			if a.State == StateActive && !c.external {
				c.issuer.Store(&issuer{cert: a.cert, signer: a.key, notAfter: minTime(a.cert.NotAfter, a.Expires)})
			}
			continue
		}
		pub := &a.key.PublicKey
		k, err := jwkOf(pub, a.ID, "jwt-svid", "")
		if err != nil {
			return err
		}
		keys = append(keys, k)
		k.Use, k.Alg = "sig", "ES256"
		oidc = append(oidc, k)
		ks.kids[a.ID] = true
		if err := b.AddJWTAuthority(a.ID, pub); err != nil {
			return fmt.Errorf("bundle: %w", err)
		}
		if a.State == StateActive {
			js0, err := newJOSESigner(a.key, a.ID)
			if err != nil {
				return err
			}
			js := &jwtSigner{signer: a.key, kid: a.ID, jose: js0}
			if c.jwtKeyTTL > 0 || a.Migrated {
				js.notAfter = a.Expires
			}
			c.jwt.Store(js)
		}
	}
	for _, r := range snap.X509 {
		b.AddX509Authority(r)
		snap.X509DER = append(snap.X509DER, r.Raw...)
		ks.skis = append(ks.skis, r.SubjectKeyId)
	}
	var err error
	if snap.JWKS, err = json.Marshal(struct {
		Keys []jwk `json:"keys"`
	}{keys}); err != nil {
		return fmt.Errorf("jwks: %w", err)
	}
	if ks.oidcJWKS, err = json.Marshal(struct {
		Keys []jwk `json:"keys"`
	}{oidc}); err != nil {
		return fmt.Errorf("jwks: %w", err)
	}
	b.SetSequenceNumber(c.sequence)
	b.SetRefreshHint(snap.RefreshHint)
	snap.Bundle = b
	ks.snap = snap
	old := c.set.Swap(ks)
	if old != nil {
		close(old.changed)
	}
	return nil
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// loadJournal reads the journal and every key it names; found is false when
// there is none.
func (c *CA) loadJournal() (found bool, err error) {
	path := filepath.Join(c.dir, JournalFile)
	data, err := readFile(path, true)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("journal: %w", err)
	}
	var j journal
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil || j.Version != 1 {
		return false, fmt.Errorf("journal %s: %w: not a version 1 key journal", path, ErrCorruptFile)
	}
	active := map[string]int{}
	for _, a := range j.Authorities {
		if a != nil && a.TPMHandle != 0 {
			// A TPM-held root: loaded by loadTPMRoots.
			if c.tpmKeys == nil {
				return false, fmt.Errorf("journal %s: %w: it names TPM-held roots but ca.key is not tpm: set ca.key tpm again, or move it aside to start with file-held roots", path, ErrCorruptFile)
			}
			if a.Kind != KindX509 || a.KeyFile != "" || !validFileName(a.PubFile) {
				return false, fmt.Errorf("journal %s: %w: bad TPM root entry", path, ErrCorruptFile)
			}
			switch a.State {
			case StatePrepared, StateActive, StateRetired, StateTainted:
			default:
				return false, fmt.Errorf("journal %s: %w: unknown state %q", path, ErrCorruptFile, a.State)
			}
			continue
		}
		if a == nil || (a.Kind != KindX509 && a.Kind != KindJWT) || !validFileName(a.KeyFile) || !validFileName(a.PubFile) {
			return false, fmt.Errorf("journal %s: %w: bad authority entry", path, ErrCorruptFile)
		}
		switch a.State {
		case StateActive:
			active[a.Kind]++
		case StatePrepared, StateRetired, StateTainted:
		default:
			return false, fmt.Errorf("journal %s: %w: unknown state %q", path, ErrCorruptFile, a.State)
		}
		if a.Kind == KindX509 && c.external {
			return false, fmt.Errorf("journal %s: %w: it names file-held roots but ca.key is tpm: move it aside to use the TPM root", path, ErrCorruptFile)
		}
		p := keyPair{key: a.KeyFile, other: a.PubFile, what: a.Kind + " key"}
		if err := recoverPair(c.dir, p, c.log); err != nil {
			return false, err
		}
		keyPath := filepath.Join(c.dir, a.KeyFile)
		kd, err := readFile(keyPath, true)
		if errors.Is(err, fs.ErrNotExist) {
			if _, perr := os.Lstat(filepath.Join(c.dir, a.PubFile)); perr == nil {
				return false, missingHalf(c.dir, p, "every SVID or JWT-SVID it signed will stop verifying")
			}
			// Both halves removed by the operator: forget the key (a new
			// one is made when it was the active one).
			c.log.Warn("CA key named in the journal was removed with its other half: forgetting it", "kind", a.Kind, "id", a.ID, "file", a.KeyFile)
			a.removed = true
			continue
		}
		if err != nil {
			return false, fmt.Errorf("key %s (named in %s): %w", a.KeyFile, JournalFile, err)
		}
		if a.key, err = parseKey(keyPath, kd); err != nil {
			return false, err
		}
		pubPath := filepath.Join(c.dir, a.PubFile)
		pd, err := readFile(pubPath, false)
		if err != nil {
			return false, fmt.Errorf("%s (named in %s): %w", a.PubFile, JournalFile, err)
		}
		if a.Kind == KindX509 {
			if a.cert, err = parseRoot(pubPath, pd, Config{TrustDomain: c.td, Dir: c.dir}, a.key); err != nil {
				return false, err
			}
			if a.ID != hex.EncodeToString(a.cert.SubjectKeyId) {
				return false, fmt.Errorf("journal %s: %w: %s does not hold authority %s", path, ErrCorruptFile, a.PubFile, a.ID)
			}
		} else if kid, err := keyID(&a.key.PublicKey); err != nil || kid != a.ID {
			return false, fmt.Errorf("journal %s: %w: %s does not hold key %s", path, ErrCorruptFile, a.KeyFile, a.ID)
		}
	}
	kept := j.Authorities[:0]
	removedActive := map[string]bool{}
	active = map[string]int{}
	for _, a := range j.Authorities {
		switch {
		case a.removed:
			removedActive[a.Kind] = removedActive[a.Kind] || a.State == StateActive
			continue
		case a.TPMHandle != 0:
		case a.State == StateActive:
			active[a.Kind]++
		}
		kept = append(kept, a)
	}
	c.forgot = len(kept) != len(j.Authorities)
	j.Authorities = kept
	for _, kind := range []string{KindX509, KindJWT} {
		if kind == KindX509 && c.external {
			continue
		}
		if active[kind] == 0 && removedActive[kind] {
			c.needNew = append(c.needNew, kind) // made anew by LoadOrCreate
			continue
		}
		if active[kind] != 1 {
			return false, fmt.Errorf("journal %s: %w: %d active %s keys, want 1 (switched ca.key from tpm to file? move %s aside to migrate the single-key files again)", path, ErrCorruptFile, active[kind], kind, JournalFile)
		}
	}
	c.auths, c.sequence, c.tpmEvict = j.Authorities, j.Sequence, j.TPMEvict
	return true, nil
}

// validFileName accepts a plain file name of the key files (no path).
func validFileName(name string) bool {
	return name != "" && name == filepath.Base(name) && name != "." && name != ".." &&
		(strings.HasPrefix(name, "ca_") || strings.HasPrefix(name, "jwt_")) && strings.HasSuffix(name, ".pem")
}
