package ca

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodeward/nodeward/attestors/tpm"
	"github.com/nodeward/nodeward/test/swtpm"
)

// realTPMKeys is TPMKeys over a real (software) TPM, as the agent adapts
// it (agent/ca_keys.go); not a fake.
type realTPMKeys struct{ tp *tpm.TPM }

func (k realTPMKeys) LoadOrCreateSigningKey(ctx context.Context, h uint32) (crypto.Signer, error) {
	s, err := k.tp.SigningKey(ctx, h)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (k realTPMKeys) LoadSigningKey(ctx context.Context, h uint32) (crypto.Signer, error) {
	s, err := k.tp.LoadSigningKey(ctx, h)
	if errors.Is(err, tpm.ErrNoKey) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (k realTPMKeys) CreateSigningKey(ctx context.Context, h uint32) (crypto.Signer, error) {
	s, err := k.tp.CreateSigningKey(ctx, h)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (k realTPMKeys) EvictSigningKey(ctx context.Context, h uint32) error {
	err := k.tp.EvictSigningKey(ctx, h)
	if errors.Is(err, tpm.ErrUnsupported) {
		return errors.Join(ErrForeignKey, err)
	}
	return err
}

const (
	handleA = tpm.DefaultSigningKeyHandle
	handleB = tpm.DefaultSigningKeyHandle + 1
)

// verifyAt checks chain (leaf first) against the CA's published roots at
// the fake clock's time.
func verifyAt(t *testing.T, c *CA, chain []*x509.Certificate, now time.Time) error {
	t.Helper()
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range c.X509Authorities() {
		roots.AddCert(r)
	}
	for _, ic := range chain[1:] {
		inter.AddCert(ic)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

func tpmAuth(t *testing.T, c *CA, state string) *AuthorityStatus {
	t.Helper()
	for _, a := range c.Authorities() {
		if a.Kind == KindX509 && a.State == state {
			return &a
		}
	}
	return nil
}

func hasKey(t *testing.T, k TPMKeys, h uint32) bool {
	t.Helper()
	s, err := k.LoadSigningKey(context.Background(), h)
	if err != nil {
		t.Fatal(err)
	}
	return s != nil
}

// TestTPMRootRotation drives `ca rotate --tpm-root` on a real swtpm with a
// fake clock: the new root is published first, activated at its time (the
// intermediate is then signed by it), the old root stays published until
// the last intermediate it signed expires, then is dropped and its key
// evicted from the TPM. A restart (a new CA on the same data dir and TPM)
// in each phase continues the rotation; a second rotation goes back to the
// first handle; a third is refused while the retired root is published,
// and tainting it drops and evicts it at once.
func TestTPMRootRotation(t *testing.T) {
	_, tp := swtpm.Start(t)
	keys := realTPMKeys{tp}
	clock := &fakeClock{now: time.Now().Truncate(time.Second)}
	dir := dataDir(t)
	var (
		mu     sync.Mutex
		events []string
	)
	cfg := Config{TrustDomain: td, Dir: dir, Clock: clock.Now, TPMKeys: keys, TPMHandle: handleA, IntermediateTTL: time.Hour,
		JWTKeyTTL: 24 * time.Hour, OnEvent: func(e KeyEvent) {
			if e.Kind == KindX509 {
				mu.Lock()
				events = append(events, e.Action)
				mu.Unlock()
			}
		}}
	load := func() *CA {
		t.Helper()
		c, err := LoadOrCreate(cfg)
		if err != nil {
			t.Fatalf("LoadOrCreate: %v", err)
		}
		return c
	}
	c := load()
	if _, err := os.Stat(filepath.Join(dir, RootKeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a file-held root key was written with TPMKeys")
	}
	roots := c.X509Authorities()
	if len(roots) != 1 {
		t.Fatalf("%d roots at start, want 1", len(roots))
	}
	oldID := hex.EncodeToString(roots[0].SubjectKeyId)
	if err := c.Rotate(KindX509); err == nil || !strings.Contains(err.Error(), "--tpm-root") {
		t.Fatalf("ca rotate of a TPM root: %v, want a refusal naming --tpm-root", err)
	}
	before, err := c.MintX509SVID(webID, nil, 30*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	seq := c.Snapshot().Sequence

	// Prepare: published at once, signs nothing yet.
	msg, err := c.RotateTPMRoot(10 * time.Minute)
	if err != nil || !strings.Contains(msg, "prepared") {
		t.Fatalf("RotateTPMRoot: %q %v", msg, err)
	}
	if n := len(c.X509Authorities()); n != 2 || c.Snapshot().Sequence <= seq {
		t.Fatalf("after prepare: %d roots, sequence %d (was %d)", n, c.Snapshot().Sequence, seq)
	}
	prep := tpmAuth(t, c, StatePrepared)
	if prep == nil || prep.TPMHandle != "0x81000101" || prep.ActivatesAt == nil || !prep.ActivatesAt.Equal(clock.Now().Add(10*time.Minute)) {
		t.Fatalf("prepared authority = %+v", prep)
	}
	if hex.EncodeToString(c.Intermediate().AuthorityKeyId) != oldID {
		t.Fatal("the prepared root signed the intermediate")
	}
	if _, err := c.RotateTPMRoot(0); err == nil || !strings.Contains(err.Error(), "in progress") {
		t.Fatalf("a second rotation while one is prepared: %v", err)
	}

	// Restart while prepared.
	c = load()
	if p := tpmAuth(t, c, StatePrepared); p == nil || p.ID != prep.ID || len(c.X509Authorities()) != 2 {
		t.Fatalf("after a restart in the prepared phase: %+v", c.Authorities())
	}
	if err := c.advanceTPM(); err != nil || tpmAuth(t, c, StatePrepared) == nil {
		t.Fatalf("activated before its time: %v", err)
	}

	// Activate at its time.
	clock.Set(clock.Now().Add(10 * time.Minute))
	if err := c.advanceTPM(); err != nil {
		t.Fatal(err)
	}
	act, ret := tpmAuth(t, c, StateActive), tpmAuth(t, c, StateRetired)
	if act == nil || act.ID != prep.ID || ret == nil || ret.ID != oldID || ret.DropsAt == nil {
		t.Fatalf("after activation: %+v", c.Authorities())
	}
	if hex.EncodeToString(c.Intermediate().AuthorityKeyId) != prep.ID {
		t.Fatal("the intermediate is not signed by the new root")
	}
	if !ret.DropsAt.After(before.Certificates[0].NotAfter.Add(-time.Second)) {
		t.Fatalf("old root drops at %v, before the SVID it chains %v", ret.DropsAt, before.Certificates[0].NotAfter)
	}
	after, err := c.MintX509SVID(webID, nil, 30*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for name, sv := range map[string]*X509SVID{"old chain": before, "new chain": after} {
		if err := verifyAt(t, c, sv.Certificates, clock.Now()); err != nil {
			t.Errorf("%s does not verify against the bundle: %v", name, err)
		}
	}

	// Restart while retired: the retired root is still published, the
	// new one signs.
	c = load()
	if r := tpmAuth(t, c, StateRetired); r == nil || r.ID != oldID || !r.DropsAt.Equal(*ret.DropsAt) {
		t.Fatalf("after a restart in the retired phase: %+v", c.Authorities())
	}
	if hex.EncodeToString(c.Intermediate().AuthorityKeyId) != prep.ID {
		t.Fatal("after a restart the intermediate is not signed by the new root")
	}
	if err := verifyAt(t, c, before.Certificates, clock.Now()); err != nil {
		t.Fatalf("an SVID of the old root no longer verifies after a restart: %v", err)
	}
	if _, err := c.RotateTPMRoot(0); err == nil || !strings.Contains(err.Error(), "published until") {
		t.Fatalf("a rotation while the old root is retired: %v", err)
	}

	// Drop at the old intermediate's expiry; the key leaves the TPM.
	clock.Set(ret.DropsAt.Add(time.Second))
	if err := c.advanceTPM(); err != nil {
		t.Fatal(err)
	}
	if rs := c.X509Authorities(); len(rs) != 1 || hex.EncodeToString(rs[0].SubjectKeyId) != prep.ID {
		t.Fatalf("after the drop the bundle has %d roots", len(rs))
	}
	if hasKey(t, keys, handleA) {
		t.Fatal("the dropped root's key is still in the TPM")
	}
	if _, err := os.Stat(filepath.Join(dir, TPMRootCertFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the dropped root's certificate file is still there: %v", err)
	}
	mu.Lock()
	got := slices.Clone(events)
	mu.Unlock()
	if want := []string{"prepare", "activate", "retire", "drop"}; !slices.Equal(got, want) {
		t.Fatalf("x509 events %v, want %v", got, want)
	}

	// A second rotation, at once, goes back to the first handle; then
	// the retired root is tainted: dropped and evicted at the next tick.
	msg, err = c.RotateTPMRoot(0)
	if err != nil || !strings.Contains(msg, "rotated") {
		t.Fatalf("RotateTPMRoot(0): %q %v", msg, err)
	}
	if a := tpmAuth(t, c, StateActive); a == nil || a.TPMHandle != "0x81000100" || hex.EncodeToString(c.Intermediate().AuthorityKeyId) != a.ID {
		t.Fatalf("after an immediate rotation: %+v", c.Authorities())
	}
	if err := c.Taint(KindX509, prep.ID); err != nil {
		t.Fatal(err)
	}
	if len(c.X509Authorities()) != 1 {
		t.Fatal("the tainted root is still published")
	}
	if err := c.advanceTPM(); err != nil {
		t.Fatal(err)
	}
	if hasKey(t, keys, handleB) || !hasKey(t, keys, handleA) {
		t.Fatal("after the taint: want the key at the first handle only")
	}
	if n := len(c.Authorities()); n != 2 { // the TPM root and the JWT key
		t.Fatalf("authorities after the taint: %+v", c.Authorities())
	}
}

// TestTPMRootRotationInterruptedCreation: a key created at the next handle
// by a rotation that crashed before journaling it (the handle is journaled
// as one to evict first) is evicted after the restart; a key at the next
// handle that the journal does not name is never overwritten or evicted:
// the rotation is refused.
func TestTPMRootRotationInterruptedCreation(t *testing.T) {
	_, tp := swtpm.Start(t)
	keys := realTPMKeys{tp}
	dir := dataDir(t)
	cfg := Config{TrustDomain: td, Dir: dir, TPMKeys: keys, TPMHandle: handleA, JWTKeyTTL: 24 * time.Hour}
	c, err := LoadOrCreate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := keys.CreateSigningKey(ctx, handleB); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RotateTPMRoot(0); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("rotation onto an occupied handle: %v", err)
	}
	if !hasKey(t, keys, handleB) {
		t.Fatal("a key the journal does not name was evicted")
	}
	// Now as a crash would leave it: the handle journaled as to-evict,
	// the key created.
	path := filepath.Join(dir, JournalFile)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var j map[string]any
	if err := json.Unmarshal(data, &j); err != nil {
		t.Fatal(err)
	}
	j["tpm_evict"] = []uint32{handleB}
	if data, err = json.Marshal(j); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err = LoadOrCreate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.advanceTPM(); err != nil {
		t.Fatal(err)
	}
	if hasKey(t, keys, handleB) {
		t.Fatal("the key of the interrupted creation is still in the TPM")
	}
	if msg, err := c.RotateTPMRoot(0); err != nil || !strings.Contains(msg, "0x81000101") {
		t.Fatalf("rotation after the cleanup: %q %v", msg, err)
	}
}

// TestRotateTPMRootRequest: the request's activate_after must be a
// duration from 0s to a year; a CA whose root is not TPM-held refuses.
func TestRotateTPMRootRequest(t *testing.T) {
	c := newCA(t, dataDir(t), nil)
	for _, after := range []string{"soon", "-1s", "9000h"} {
		if _, err := c.Apply(Request{Action: "rotate-tpm-root", Kind: KindX509, ActivateAfter: after}); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "activate_after") {
			t.Errorf("activate_after %q: %v", after, err)
		}
	}
	if _, err := c.Apply(Request{Action: "rotate-tpm-root", Kind: KindX509, ActivateAfter: "1m"}); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "not held in the TPM") {
		t.Errorf("a file-held root: %v", err)
	}
}

// TestTPMRootRotationConcurrent: intermediate rotations, mints and status
// reads run while the TPM root is rotated at once and the old one tainted
// and evicted (under -race); every SVID minted verifies against the
// bundle of its moment plus the roots published since.
func TestTPMRootRotationConcurrent(t *testing.T) {
	_, tp := swtpm.Start(t)
	c, err := LoadOrCreate(Config{TrustDomain: td, Dir: dataDir(t), TPMKeys: realTPMKeys{tp}, TPMHandle: handleA, IntermediateTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var minted sync.Map
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := c.RotateIntermediate(); err != nil {
				t.Error(err)
				return
			}
		}
	})
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			sv, err := c.MintX509SVID(webID, nil, time.Minute)
			if err != nil {
				t.Error(err)
				return
			}
			minted.Store(i, sv)
			_ = c.Authorities()
		}
	})
	for range 2 {
		if _, err := c.RotateTPMRoot(0); err != nil {
			t.Fatal(err)
		}
		ret := tpmAuth(t, c, StateRetired)
		if ret == nil {
			t.Fatal("no retired root after an immediate rotation")
		}
		if err := c.Taint(KindX509, ret.ID); err != nil {
			t.Fatal(err)
		}
		if err := c.advanceTPM(); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	// The SVIDs of the current root verify; the others chain to roots
	// tainted on purpose.
	cur := hex.EncodeToString(c.X509Authorities()[0].SubjectKeyId)
	n := 0
	minted.Range(func(_, v any) bool {
		sv := v.(*X509SVID)
		if hex.EncodeToString(sv.Certificates[1].AuthorityKeyId) == cur {
			n++
			if err := verifyAt(t, c, sv.Certificates, time.Now()); err != nil {
				t.Errorf("SVID of the current root does not verify: %v", err)
				return false
			}
		}
		return true
	})
	if hasKey(t, realTPMKeys{tp}, handleB) || !hasKey(t, realTPMKeys{tp}, handleA) {
		t.Fatal("after two rotations and taints: want the key at the first handle only")
	}
	t.Logf("%d SVIDs of the current root verified", n)
}

// BenchmarkTPMRootRotationCycle is one whole TPM root rotation on a real
// swtpm, done at once: a new key created and persisted in the TPM, its
// root self-signed by the TPM, an intermediate signed by it, the journal
// written three times, then the old root tainted, dropped and its key
// evicted (off the request path; for the record in BENCHMARKS.md).
func BenchmarkTPMRootRotationCycle(b *testing.B) {
	_, tp := swtpm.Start(b)
	c, err := LoadOrCreate(Config{TrustDomain: td, Dir: dataDir(b), TPMKeys: realTPMKeys{tp}, TPMHandle: handleA, IntermediateTTL: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := c.RotateTPMRoot(0); err != nil {
			b.Fatal(err)
		}
		var old string
		for _, a := range c.Authorities() {
			if a.Kind == KindX509 && a.State == StateRetired {
				old = a.ID
			}
		}
		if err := c.Taint(KindX509, old); err != nil {
			b.Fatal(err)
		}
		if err := c.advanceTPM(); err != nil {
			b.Fatal(err)
		}
	}
}
