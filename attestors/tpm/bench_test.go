package tpm_test

import (
	"crypto/sha256"
	"testing"

	"github.com/nodeward/nodeward/attestors/tpm"
	"github.com/nodeward/nodeward/test/swtpm"
)

// BenchmarkAttestVerify is one node-attestation round on swtpm: evidence
// (EK, quote of PCR 7, AK), software verification with the EK chain, and
// credential activation.
func BenchmarkAttestVerify(b *testing.B) {
	sim, tp := swtpm.Start(b)
	pool, inter, err := tpm.LoadRoots(sim.RootsPEM)
	if err != nil {
		b.Fatal(err)
	}
	n := make([]byte, 32)
	for b.Loop() {
		ev, err := tp.Attest(ctx, n, []int{7})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := tpm.Verify(ev, n, pool, inter); err != nil {
			b.Fatal(err)
		}
		ch, secret, err := tpm.NewChallenge(ev)
		if err != nil {
			b.Fatal(err)
		}
		answer, err := tp.ActivateCredential(ctx, ch)
		if err != nil {
			b.Fatal(err)
		}
		if err := tpm.CheckActivation(secret, answer); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTPMSign is one signature by the TPM-held CA key (what an
// intermediate rotation costs; never on the request path).
func BenchmarkTPMSign(b *testing.B) {
	_, tp := swtpm.Start(b)
	k, err := tp.SigningKey(ctx, tpm.DefaultSigningKeyHandle)
	if err != nil {
		b.Fatal(err)
	}
	d := sha256.Sum256([]byte("x"))
	for b.Loop() {
		if _, err := k.Sign(nil, d[:], nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDevIDProof is the TPM's side of one tpm_devid attestation on
// swtpm (RSA and ECC DevID keys): the AK's certification of the DevID key
// with the EK, the DevID signature of the server's nonce and credential
// activation, plus the server's software checks.
func BenchmarkDevIDProof(b *testing.B) {
	for _, typ := range []string{"rsa", "ecc"} {
		b.Run(typ, func(b *testing.B) {
			_, tp := swtpm.Start(b)
			k, err := tp.CreateDevIDKey(ctx, typ)
			if err != nil {
				b.Fatal(err)
			}
			nonce := make([]byte, 32)
			for b.Loop() {
				ev, err := tp.CertifyDevID(ctx, k)
				if err != nil {
					b.Fatal(err)
				}
				ch, secret, err := tpm.VerifyDevIDEvidence(ev)
				if err != nil {
					b.Fatal(err)
				}
				sig, err := tp.SignDevID(ctx, k, nonce)
				if err != nil {
					b.Fatal(err)
				}
				if err := tpm.VerifyDevIDSignature(k.Public(), nonce, sig); err != nil {
					b.Fatal(err)
				}
				answer, err := tp.ActivateCredentialRSAAK(ctx, ch)
				if err != nil {
					b.Fatal(err)
				}
				if err := tpm.CheckActivation(secret, answer); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
