package ca

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/nodeward/nodeward/attestors/tpm"
	"github.com/nodeward/nodeward/test/swtpm"
)

func TestMain(m *testing.M) {
	code := m.Run()
	swtpm.Cleanup()
	os.Exit(code)
}

func BenchmarkMintX509SVID(b *testing.B) {
	c := newCA(b, dataDir(b), nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.MintX509SVID(webID, []string{"web.internal"}, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMintJWTSVID(b *testing.B) {
	c := newCA(b, dataDir(b), nil)
	aud := []string{"aud"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.MintJWTSVID(webID, aud, time.Minute); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMintX509SVIDTPMRooted mints with the root key in a real swtpm:
// the TPM signed the intermediate once, and each SVID is signed by the
// software intermediate, so the per-request cost matches the software CA's.
func BenchmarkMintX509SVIDTPMRooted(b *testing.B) {
	c := tpmRootedCA(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.MintX509SVID(webID, []string{"web.internal"}, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRotateIntermediateTPM is one intermediate rotation: a TPM
// signature plus a software key (off the request path).
func BenchmarkRotateIntermediateTPM(b *testing.B) {
	c := tpmRootedCA(b)
	for b.Loop() {
		if err := c.RotateIntermediate(); err != nil {
			b.Fatal(err)
		}
	}
}

// tpmRootedCA is a CA whose root key is persisted in a fresh swtpm.
func tpmRootedCA(b *testing.B) *CA {
	b.Helper()
	_, tp := swtpm.Start(b)
	signer, err := tp.SigningKey(context.Background(), tpm.DefaultSigningKeyHandle)
	if err != nil {
		b.Fatal(err)
	}
	c, err := LoadOrCreate(Config{TrustDomain: td, Dir: dataDir(b), RootSigner: signer})
	if err != nil {
		b.Fatal(err)
	}
	return c
}
