package ca

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
)

const lifeTTL = 6 * time.Hour

type recorder struct {
	mu     sync.Mutex
	events []KeyEvent
}

func (r *recorder) add(e KeyEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *recorder) actions() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var s []string
	for _, e := range r.events {
		s = append(s, e.Kind+":"+e.Action)
	}
	return strings.Join(s, ",")
}

func rotatingCA(t *testing.T, dir string, clk *fakeClock, rec *recorder) *CA {
	t.Helper()
	cfg := Config{TrustDomain: td, Dir: dir, Clock: clk.Now, KeyTTL: lifeTTL, JWTKeyTTL: lifeTTL}
	if rec != nil {
		cfg.OnEvent = rec.add
	}
	c, err := LoadOrCreate(cfg)
	if err != nil {
		t.Fatalf("LoadOrCreate: %v", err)
	}
	return c
}

func states(c *CA, kind string) map[string]string {
	m := map[string]string{}
	for _, a := range c.Authorities() {
		if a.Kind == kind {
			m[a.ID] = a.State
		}
	}
	return m
}

func activeID(t *testing.T, c *CA, kind string) string {
	t.Helper()
	for id, s := range states(c, kind) {
		if s == StateActive {
			return id
		}
	}
	t.Fatalf("no active %s key", kind)
	return ""
}

// bundleVerifies reports whether leaf verifies against the CA's current bundle.
func bundleVerifies(c *CA, svid *X509SVID) bool {
	pool := x509.NewCertPool()
	for _, r := range c.Snapshot().X509 {
		pool.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, ic := range svid.Certificates[1:] {
		inter.AddCert(ic)
	}
	_, err := svid.Certificates[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: svid.Certificates[0].NotBefore.Add(time.Minute), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

// jwtValidates checks tok's ES256 signature against the key its kid names
// in the current JWKS (the fake clock is far from the wall clock, so a
// full go-spiffe validation would judge exp by the wrong time).
func jwtValidates(t *testing.T, c *CA, tok string) bool {
	t.Helper()
	b, err := jwtbundle.Parse(td, c.Snapshot().JWKS)
	if err != nil {
		t.Fatalf("parse JWKS: %v", err)
	}
	parts := strings.Split(tok, ".")
	var hdr struct {
		Kid string `json:"kid"`
	}
	decodeSegment(t, parts[0], &hdr)
	key, ok := b.FindJWTAuthority(hdr.Kid)
	if !ok {
		return false
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		t.Fatalf("signature: %v", err)
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	return ecdsa.Verify(key.(*ecdsa.PublicKey), digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
}

// TestLifecycleFullCycles drives the clock through three full cycles: a
// prepared key is published before it signs, the old one stays published
// until its last SVID expired, every change bumps the sequence and closes
// Changed, and SVIDs minted at any point verify against the bundle until
// they expire.
func TestLifecycleFullCycles(t *testing.T) {
	clk := &fakeClock{now: t0}
	rec := &recorder{}
	c := rotatingCA(t, dataDir(t), clk, rec)
	seq := c.Snapshot().Sequence
	type minted struct {
		x *X509SVID
		j *JWT
	}
	var live []minted
	step := lifeTTL / 24
	prevActive := activeID(t, c, KindX509)
	sawPrepared := false
	activations := 0
	for now := t0; now.Before(t0.Add(3 * lifeTTL)); now = now.Add(step) {
		clk.Set(now)
		ch := c.Changed()
		before := c.Snapshot()
		if err := c.Advance(); err != nil {
			t.Fatalf("Advance at %v: %v", now.Sub(t0), err)
		}
		after := c.Snapshot()
		if after != before {
			select {
			case <-ch:
			default:
				t.Fatalf("snapshot changed at %v but Changed() was not closed", now.Sub(t0))
			}
			if after.Sequence <= seq {
				t.Fatalf("sequence %d did not increase (was %d)", after.Sequence, seq)
			}
			seq = after.Sequence
		}
		st := states(c, KindX509)
		for id, s := range st {
			if s == StatePrepared {
				sawPrepared = true
				// Published before it signs.
				found := false
				for _, r := range after.X509 {
					if hex.EncodeToString(r.SubjectKeyId) == id {
						found = true
					}
				}
				if !found {
					t.Fatalf("prepared root %s not in the bundle", id)
				}
			}
		}
		if a := activeID(t, c, KindX509); a != prevActive {
			activations++
			if !sawPrepared {
				t.Fatalf("root %s activated without having been published as prepared", a)
			}
			prevActive = a
		}
		// Everything minted earlier and not yet expired still verifies.
		kept := live[:0]
		for _, m := range live {
			if !now.Before(m.x.Certificates[0].NotAfter) {
				continue
			}
			if !bundleVerifies(c, m.x) {
				t.Fatalf("at %v an unexpired SVID (not after %v) no longer verifies", now.Sub(t0), m.x.Certificates[0].NotAfter.Sub(t0))
			}
			if c.Tainted(m.x.Certificates) {
				t.Fatalf("at %v Tainted() true for an SVID of a published root", now.Sub(t0))
			}
			kept = append(kept, m)
		}
		live = kept
		x, err := c.MintX509SVID(webID, nil, lifeTTL/6)
		if err != nil {
			t.Fatalf("mint X.509 at %v: %v", now.Sub(t0), err)
		}
		if x.Certificates[0].NotAfter.After(now.Add(lifeTTL / 6)) {
			t.Fatalf("leaf outlives its ttl")
		}
		j, err := c.MintJWTSVID(webID, []string{"aud"}, time.Minute)
		if err != nil {
			t.Fatalf("mint JWT at %v: %v", now.Sub(t0), err)
		}
		if !jwtValidates(t, c, j.Token) {
			t.Fatalf("fresh JWT-SVID does not validate at %v", now.Sub(t0))
		}
		live = append(live, minted{x, j})
		if n := len(after.X509); n > 3 {
			t.Fatalf("%d roots published: old ones are not dropped", n)
		}
	}
	if activations < 3 {
		t.Fatalf("%d root activations in 3 lifetimes, want at least 3", activations)
	}
	got := rec.actions()
	for _, want := range []string{"x509:prepare", "x509:activate", "x509:retire", "x509:drop", "jwt:prepare", "jwt:activate", "jwt:retire", "jwt:drop"} {
		if !strings.Contains(got, want) {
			t.Errorf("events %s lack %s", got, want)
		}
	}
	// Dropped keys' files are gone: only journaled files remain.
	ents, _ := os.ReadDir(c.dir)
	for _, e := range ents {
		if n := e.Name(); strings.HasPrefix(n, "ca_key.") && n != RootKeyFile {
			id := strings.TrimSuffix(strings.TrimPrefix(n, "ca_key."), ".pem")
			if _, ok := states(c, KindX509)[id]; !ok {
				t.Errorf("file %s of a dropped root left behind", n)
			}
		}
	}
}

// TestLifecycleRestartEachPhase restarts the CA (a new LoadOrCreate on the
// same dir) in every phase and checks it continues with the same key set.
func TestLifecycleRestartEachPhase(t *testing.T) {
	clk := &fakeClock{now: t0}
	dir := dataDir(t)
	c := rotatingCA(t, dir, clk, nil)
	step := lifeTTL / 12
	for now := t0; now.Before(t0.Add(2 * lifeTTL)); now = now.Add(step) {
		clk.Set(now)
		if err := c.Advance(); err != nil {
			t.Fatal(err)
		}
		want := c.Authorities()
		seq := c.Snapshot().Sequence
		c2 := rotatingCA(t, dir, clk, nil)
		got := c2.Authorities()
		if len(got) != len(want) {
			t.Fatalf("after restart at %v: %v, want %v", now.Sub(t0), got, want)
		}
		for i := range want {
			if got[i].ID != want[i].ID || got[i].State != want[i].State || !got[i].Expires.Equal(want[i].Expires) {
				t.Fatalf("after restart at %v: authority %d is %+v, want %+v", now.Sub(t0), i, got[i], want[i])
			}
		}
		if c2.Snapshot().Sequence != seq {
			t.Fatalf("sequence %d after restart, want %d", c2.Snapshot().Sequence, seq)
		}
		if c2.JWTKeyID() != c.JWTKeyID() {
			t.Fatalf("active JWT key changed across a restart")
		}
		x, err := c2.MintX509SVID(webID, nil, time.Minute)
		if err != nil || !bundleVerifies(c, x) {
			t.Fatalf("SVID of the restarted CA does not verify against the old bundle: %v", err)
		}
		c = c2
	}
}

// TestLifecycleMigratesSingleKeyLayout: a data dir of the single-key layout
// keeps its root and JWT key as the active ones when rotation is turned on.
func TestLifecycleMigratesSingleKeyLayout(t *testing.T) {
	clk := &fakeClock{now: t0}
	dir := dataDir(t)
	old := newCA(t, dir, clk.Now)
	oldRoot := old.X509Authorities()[0]
	oldKid := old.JWTKeyID()
	if _, err := os.Stat(filepath.Join(dir, JournalFile)); err == nil {
		t.Fatal("a CA without rotation wrote a journal")
	}
	c := rotatingCA(t, dir, clk, nil)
	if r := c.X509Authorities(); len(r) != 1 || !r[0].Equal(oldRoot) {
		t.Fatalf("migrated roots %v, want the old root only", r)
	}
	if c.JWTKeyID() != oldKid {
		t.Fatal("migration changed the JWT key")
	}
	fi, err := os.Stat(filepath.Join(dir, JournalFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("journal after migration: %v, mode %v", err, fi)
	}
	// The 5-year root is cut to the configured ttl: leaves are clamped.
	x, err := c.MintX509SVID(webID, nil, 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if x.Certificates[0].NotAfter.After(t0.Add(lifeTTL)) {
		t.Fatalf("leaf of a migrated root not after %v, beyond the ttl", x.Certificates[0].NotAfter)
	}
	// It then rotates away.
	clk.Set(t0.Add(lifeTTL))
	if err := c.Advance(); err != nil {
		t.Fatal(err)
	}
	if activeID(t, c, KindX509) == hex.EncodeToString(oldRoot.SubjectKeyId) {
		t.Fatal("migrated root still active after its ttl")
	}
	clk.Set(t0.Add(lifeTTL + time.Second))
	if err := c.Advance(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, RootKeyFile)); !os.IsNotExist(err) {
		t.Fatalf("dropped migrated root key still on disk: %v", err)
	}
	// A restart after the old files are gone loads the journal, not a
	// fresh single-key layout.
	c2 := rotatingCA(t, dir, clk, nil)
	if activeID(t, c2, KindX509) != activeID(t, c, KindX509) {
		t.Fatal("restart after migration lost the key set")
	}
}

// TestRotateAndTaint: rotate makes a new key active at once; taint drops
// the old one from the bundle and reports its SVIDs and JWTs.
func TestRotateAndTaint(t *testing.T) {
	clk := &fakeClock{now: t0}
	c := rotatingCA(t, dataDir(t), clk, nil)
	x, err := c.MintX509SVID(webID, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	j, err := c.MintJWTSVID(webID, []string{"aud"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	oldRoot, oldKid := activeID(t, c, KindX509), c.JWTKeyID()
	if c.Tainted(x.Certificates) || c.JWTKeyTainted(oldKid) {
		t.Fatal("tainted before any taint")
	}
	if err := c.Taint(KindX509, oldRoot); err == nil {
		t.Fatal("tainting the active root succeeded")
	}
	ch := c.Changed()
	for _, k := range []string{KindX509, KindJWT} {
		if err := c.Rotate(k); err != nil {
			t.Fatalf("Rotate(%s): %v", k, err)
		}
	}
	select {
	case <-ch:
	default:
		t.Fatal("rotate did not close Changed")
	}
	if activeID(t, c, KindX509) == oldRoot || c.JWTKeyID() == oldKid {
		t.Fatal("rotate did not change the active keys")
	}
	if !bundleVerifies(c, x) || !jwtValidates(t, c, j.Token) {
		t.Fatal("after rotate (before taint) the old key's SVIDs must still verify")
	}
	serial := x509Serial(t, c, oldRoot)
	if err := c.Taint(KindX509, serial); err != nil {
		t.Fatalf("taint by serial: %v", err)
	}
	if err := c.Taint(KindJWT, oldKid); err != nil {
		t.Fatalf("taint kid: %v", err)
	}
	if bundleVerifies(c, x) || jwtValidates(t, c, j.Token) {
		t.Fatal("tainted authority still in the bundle")
	}
	if !c.Tainted(x.Certificates) || !c.JWTKeyTainted(oldKid) {
		t.Fatal("Tainted/JWTKeyTainted false for the tainted authority")
	}
	if states(c, KindX509)[oldRoot] != StateTainted {
		t.Fatalf("state %v", states(c, KindX509))
	}
	if err := c.Taint(KindJWT, "nope"); err == nil {
		t.Fatal("taint of an unknown kid succeeded")
	}
	fresh, err := c.MintX509SVID(webID, nil, time.Hour)
	if err != nil || c.Tainted(fresh.Certificates) || !bundleVerifies(c, fresh) {
		t.Fatalf("re-minted SVID: %v", err)
	}
}

func x509Serial(t *testing.T, c *CA, id string) string {
	t.Helper()
	for _, a := range c.Authorities() {
		if a.ID == id {
			return a.Serial
		}
	}
	t.Fatalf("no authority %s", id)
	return ""
}

// TestLifecycleJournalRefusesPlantedFiles: a journal naming a path outside
// the data dir, or a key file open to others, is refused.
func TestLifecycleJournalRefusesPlantedFiles(t *testing.T) {
	clk := &fakeClock{now: t0}
	dir := dataDir(t)
	c := rotatingCA(t, dir, clk, nil)
	clk.Set(t0.Add(lifeTTL / 2))
	if err := c.Advance(); err != nil {
		t.Fatal(err)
	}
	var prepared string
	for id, s := range states(c, KindX509) {
		if s == StatePrepared {
			prepared = id
		}
	}
	if prepared == "" {
		t.Fatal("no prepared root at half life")
	}
	keyFile := filepath.Join(dir, "ca_key."+prepared+".pem")
	if err := os.Chmod(keyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreate(Config{TrustDomain: td, Dir: dir, Clock: clk.Now, KeyTTL: lifeTTL, JWTKeyTTL: lifeTTL}); err == nil || !strings.Contains(err.Error(), "mode") {
		t.Fatalf("key open to others: %v", err)
	}
	if err := os.Chmod(keyFile, 0o600); err != nil {
		t.Fatal(err)
	}
	jp := filepath.Join(dir, JournalFile)
	data, err := os.ReadFile(jp)
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(data), "ca_key."+prepared+".pem", "../ca_key.pem", 1)
	if err := os.WriteFile(jp, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreate(Config{TrustDomain: td, Dir: dir, Clock: clk.Now, KeyTTL: lifeTTL}); err == nil {
		t.Fatal("journal naming a file outside the data dir accepted")
	}
}

// TestLifecycleDiskFullKeepsServing: a failed journal write (read-only data
// dir) leaves the CA serving with the old keys, and the step is retried.
func TestLifecycleDiskFullKeepsServing(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root ignores directory permissions")
	}
	clk := &fakeClock{now: t0}
	dir := dataDir(t)
	c := rotatingCA(t, dir, clk, nil)
	before := c.Snapshot()
	if err := os.Chmod(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(dir, 0o700) })
	clk.Set(t0.Add(lifeTTL / 2))
	if err := c.Advance(); err == nil {
		t.Fatal("Advance on a read-only data dir succeeded")
	}
	if c.Snapshot() != before {
		t.Fatal("snapshot changed although nothing could be persisted")
	}
	if _, err := c.MintX509SVID(webID, nil, time.Minute); err != nil {
		t.Fatalf("mint after a failed step: %v", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := c.Advance(); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if len(c.Snapshot().X509) != 2 {
		t.Fatalf("%d roots after the retried prepare, want 2", len(c.Snapshot().X509))
	}
}

// TestLifecycleLostKeyHalf: with a journal, a key file missing beside its
// other half is refused (restore or remove both); with both removed, a new
// active key is made in its place.
func TestLifecycleLostKeyHalf(t *testing.T) {
	clk := &fakeClock{now: t0}
	dir := dataDir(t)
	c := rotatingCA(t, dir, clk, nil)
	kid := c.JWTKeyID()
	if err := os.Remove(filepath.Join(dir, JWTKeyFile)); err != nil {
		t.Fatal(err)
	}
	_, err := LoadOrCreate(Config{TrustDomain: td, Dir: dir, Clock: clk.Now, KeyTTL: lifeTTL, JWTKeyTTL: lifeTTL})
	if err == nil || !strings.Contains(err.Error(), "restore "+JWTKeyFile) || !strings.Contains(err.Error(), "remove "+JWTPublicKeyFile) {
		t.Fatalf("lost half: %v", err)
	}
	if err := os.Remove(filepath.Join(dir, JWTPublicKeyFile)); err != nil {
		t.Fatal(err)
	}
	c2 := rotatingCA(t, dir, clk, nil)
	if c2.JWTKeyID() == kid || !c2.JWTKeyTainted(kid) {
		t.Fatal("no new JWT key after both halves were removed")
	}
	if _, err := c2.MintJWTSVID(webID, []string{"aud"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	c3 := rotatingCA(t, dir, clk, nil)
	if c3.JWTKeyID() != c2.JWTKeyID() {
		t.Fatal("the new key was not journaled")
	}
}
