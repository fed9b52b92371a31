package tpm_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/nodeward/nodeward/attestors/tpm"
	"github.com/nodeward/nodeward/test/swtpm"
)

// TestDevIDEvidence provisions a DevID key in a real swtpm and runs the
// tpm_devid proof against it: the AK's certification of the DevID key,
// the DevID signature of a nonce, and credential activation for the RSA
// EK and AK, each verified in software as SPIRE's server does.
func TestDevIDEvidence(t *testing.T) {
	t.Parallel()
	for _, typ := range []string{"rsa", "ecc"} {
		t.Run(typ, func(t *testing.T) {
			t.Parallel()
			_, tp := swtpm.Start(t)
			k, err := tp.CreateDevIDKey(ctx, typ)
			if err != nil {
				t.Fatal(err)
			}
			switch typ {
			case "rsa":
				if _, ok := k.Public().(*rsa.PublicKey); !ok {
					t.Fatalf("public key %T, want RSA", k.Public())
				}
			case "ecc":
				if _, ok := k.Public().(*ecdsa.PublicKey); !ok {
					t.Fatalf("public key %T, want ECDSA", k.Public())
				}
			}
			// The blobs round-trip through files, with and without the
			// TPM2B size prefix tpm2-tools writes.
			dir := t.TempDir()
			pubPath, privPath := filepath.Join(dir, "devid.pub"), filepath.Join(dir, "devid.priv")
			sized := func(b []byte) []byte { return append([]byte{byte(len(b) >> 8), byte(len(b))}, b...) }
			if err := os.WriteFile(pubPath, sized(k.PublicArea()), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(privPath, k.PrivateBlob(), 0o600); err != nil {
				t.Fatal(err)
			}
			k2, err := tpm.LoadDevIDKeyFiles(pubPath, privPath)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(k2.PublicArea(), k.PublicArea()) {
				t.Fatal("the size-prefixed public blob did not parse to the same key")
			}

			ev, err := tp.CertifyDevID(ctx, k2)
			if err != nil {
				t.Fatal(err)
			}
			ek, err := tp.EK(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(ev.EKCert, ek.Cert.Raw) || ek.Type != "rsa" {
				t.Fatal("the evidence does not carry the TPM's RSA EK certificate")
			}
			ch, secret, err := tpm.VerifyDevIDEvidence(ev)
			if err != nil {
				t.Fatal(err)
			}
			nonce := []byte("a nonce from the server, 32 byte")
			sig, err := tp.SignDevID(ctx, k2, nonce)
			if err != nil {
				t.Fatal(err)
			}
			if err := tpm.VerifyDevIDSignature(k.Public(), nonce, sig); err != nil {
				t.Fatalf("DevID signature: %v", err)
			}
			if err := tpm.VerifyDevIDSignature(k.Public(), []byte("another nonce"), sig); err == nil {
				t.Fatal("the signature verified over other data")
			}
			// A CSR signed by the TPM-held key (what the DevID CA signs).
			der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "node-" + typ}}, tp.DevIDSigner(k2))
			if err != nil {
				t.Fatal(err)
			}
			csr, err := x509.ParseCertificateRequest(der)
			if err != nil {
				t.Fatal(err)
			}
			if err := csr.CheckSignature(); err != nil {
				t.Fatalf("CSR signed by the DevID key: %v", err)
			}
			answer, err := tp.ActivateCredentialRSAAK(ctx, ch)
			if err != nil {
				t.Fatal(err)
			}
			if err := tpm.CheckActivation(secret, answer); err != nil {
				t.Fatal(err)
			}

			// Evidence about another key fails: the certified name is the
			// DevID key's, not the one the payload claims.
			other, err := tp.CreateDevIDKey(ctx, typ)
			if err != nil {
				t.Fatal(err)
			}
			forged := *ev
			forged.DevIDPub = other.PublicArea()
			if _, _, err := tpm.VerifyDevIDEvidence(&forged); !errors.Is(err, tpm.ErrEvidence) {
				t.Fatalf("evidence with a swapped DevID key: %v, want ErrEvidence", err)
			}
		})
	}
}

// TestDevIDKeyFromAnotherTPMDoesNotLoad: the private blob is sealed to the
// storage seed of the TPM that made it; a copy is useless on another TPM
// (here: the same swtpm state after TPM2_Clear, which draws a new seed).
func TestDevIDKeyFromAnotherTPMDoesNotLoad(t *testing.T) {
	t.Parallel()
	_, a := swtpm.Start(t)
	_, b := swtpm.Start(t)
	k, err := a.CreateDevIDKey(ctx, "ecc")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.SignDevID(ctx, k, []byte("x")); err != nil {
		t.Fatalf("a TPM with the same storage seed: %v", err)
	}
	if err := tpm.ClearForTest(ctx, b); err != nil {
		t.Fatal(err)
	}
	if _, err := b.SignDevID(ctx, k, []byte("x")); !errors.Is(err, tpm.ErrUnsupported) {
		t.Fatalf("another TPM used the DevID key: %v", err)
	}
}

func TestDevIDKeyFileChecks(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pub, priv := filepath.Join(dir, "p"), filepath.Join(dir, "k")
	if err := os.WriteFile(pub, []byte{0, 1, 2}, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(priv, []byte{0, 1, 2}, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := tpm.LoadDevIDKeyFiles(pub, priv); err == nil || !bytes.Contains([]byte(err.Error()), []byte("chmod 600")) {
		t.Fatalf("a group-readable private blob: %v", err)
	}
	if err := os.Chmod(priv, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := tpm.LoadDevIDKeyFiles(pub, priv); !errors.Is(err, tpm.ErrEvidence) {
		t.Fatalf("garbage public blob: %v, want ErrEvidence", err)
	}
}
