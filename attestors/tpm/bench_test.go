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
