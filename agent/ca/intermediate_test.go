package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// externalRoot is a root key held outside the data directory. The TPM
// suite (attestors/tpm and the agent's TPM tests) runs the same paths with
// a key inside swtpm; here an in-memory key stands for it, since what is
// tested is the CA's use of any crypto.Signer.
func externalRoot(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func verifies(t *testing.T, c *CA, sv *X509SVID, at time.Time) error {
	t.Helper()
	b := x509bundle.FromX509Authorities(td, c.X509Authorities())
	_, _, err := x509svid.Verify(sv.Certificates, b, x509svid.WithTime(at))
	return err
}

func TestExternalRootSignsRotatingIntermediate(t *testing.T) {
	dir := dataDir(t)
	clock := &fakeClock{now: t0}
	root := externalRoot(t)
	c, err := LoadOrCreate(Config{TrustDomain: td, Dir: dir, Clock: clock.Now, RootSigner: root, IntermediateTTL: 4 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, RootKeyFile)); !os.IsNotExist(err) {
		t.Fatalf("%s exists with an external root key: %v", RootKeyFile, err)
	}
	if _, err := os.Stat(filepath.Join(dir, TPMRootCertFile)); err != nil {
		t.Fatal(err)
	}
	if !c.X509Authorities()[0].PublicKey.(*ecdsa.PublicKey).Equal(root.Public()) {
		t.Fatal("the root certificate is not for the external key")
	}
	inter := c.Intermediate()
	if inter == nil || !inter.IsCA || !inter.MaxPathLenZero || inter.CheckSignatureFrom(c.X509Authorities()[0]) != nil {
		t.Fatalf("intermediate: %+v", inter)
	}
	if want := t0.Add(2 * time.Hour); c.NextRotation().Sub(want).Abs() > time.Second {
		t.Fatalf("NextRotation %v, want about %v", c.NextRotation(), want)
	}
	old, err := c.MintX509SVID(webID, nil, 3*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if len(old.Certificates) != 2 || old.Certificates[1] != inter {
		t.Fatalf("chain has %d certificates, want leaf + intermediate", len(old.Certificates))
	}
	if err := verifies(t, c, old, t0); err != nil {
		t.Fatalf("SVID under the first intermediate: %v", err)
	}
	bundle := string(c.X509BundleDER())

	clock.Set(t0.Add(2 * time.Hour))
	if err := c.RotateIntermediate(); err != nil {
		t.Fatal(err)
	}
	if c.Intermediate() == inter || string(c.X509BundleDER()) != bundle {
		t.Fatal("rotation must change the intermediate and keep the bundle")
	}
	fresh, err := c.MintX509SVID(webID, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if fresh.Certificates[1] != c.Intermediate() {
		t.Fatal("new SVIDs are not minted by the new intermediate")
	}
	// Both verify against the one bundle: SVIDs minted before the
	// rotation stay valid until they expire.
	for name, sv := range map[string]*X509SVID{"old": old, "fresh": fresh} {
		if err := verifies(t, c, sv, t0.Add(2*time.Hour)); err != nil {
			t.Errorf("%s SVID after rotation: %v", name, err)
		}
	}
	// An SVID never outlives its intermediate.
	long, err := c.MintX509SVID(webID, nil, 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !long.Certificates[0].NotAfter.Equal(c.Intermediate().NotAfter) {
		t.Fatalf("SVID NotAfter %v beyond intermediate %v", long.Certificates[0].NotAfter, c.Intermediate().NotAfter)
	}

	// Restart with the same external key: same root, new intermediate.
	again, err := LoadOrCreate(Config{TrustDomain: td, Dir: dir, Clock: clock.Now, RootSigner: root})
	if err != nil {
		t.Fatal(err)
	}
	if string(again.X509BundleDER()) != bundle {
		t.Fatal("the root changed across a restart with the same key")
	}
	// Another key (a different TPM) with the same data dir: refused, not replaced.
	if _, err := LoadOrCreate(Config{TrustDomain: td, Dir: dir, Clock: clock.Now, RootSigner: externalRoot(t)}); err == nil {
		t.Fatal("a root certificate of another key was accepted")
	}
}

// TestSoftwareCAHasNoIntermediate: without an external key the root signs
// leaves directly and rotation is a no-op.
func TestSoftwareCAHasNoIntermediate(t *testing.T) {
	c := newCA(t, dataDir(t), nil)
	if c.Intermediate() != nil || !c.NextRotation().IsZero() || c.RotateIntermediate() != nil {
		t.Fatal("software CA reports an intermediate")
	}
	sv, err := c.MintX509SVID(webID, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if len(sv.Certificates) != 1 {
		t.Fatalf("chain of %d", len(sv.Certificates))
	}
}
