package tpm_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"math/big"
	"os"
	"sync"
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

var ctx = context.Background()

func TestEKAndChain(t *testing.T) {
	t.Parallel()
	sim, tp := swtpm.Start(t)
	ek, err := tp.EK(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ek.Type != "rsa" || ek.Cert == nil {
		t.Fatalf("EK type %s, cert %v: want the provisioned RSA EK with its certificate", ek.Type, ek.Cert != nil)
	}
	again, err := tp.EK(ctx)
	if err != nil || again.Hash() != ek.Hash() || len(ek.Hash()) != 64 {
		t.Fatalf("EK hash unstable: %s vs %s (%v)", ek.Hash(), again.Hash(), err)
	}
	roots, inter := sim.Roots(t)
	caHash, err := tpm.VerifyEKCert(ek.Cert, inter, roots)
	if err != nil {
		t.Fatalf("EK chain with the right roots: %v", err)
	}
	if sum := sha256.Sum256(inter[0].Raw); caHash != hex.EncodeToString(sum[:]) {
		t.Fatalf("ek-ca hash %s is not the issuing CA's", caHash)
	}
	// A root that did not issue it.
	wrong := x509.NewCertPool()
	wrong.AddCert(selfSigned(t))
	if _, err := tpm.VerifyEKCert(ek.Cert, nil, wrong); !errors.Is(err, tpm.ErrEKChain) {
		t.Fatalf("EK chain with a wrong root: %v, want ErrEKChain", err)
	}
}

func selfSigned(t *testing.T) *x509.Certificate {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "not a TPM vendor"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func nonce(t *testing.T) []byte {
	t.Helper()
	n := make([]byte, 32)
	if _, err := rand.Read(n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestAttestVerifyAndActivate(t *testing.T) {
	t.Parallel()
	sim, tp := swtpm.Start(t)
	roots, inter := sim.Roots(t)
	n := nonce(t)
	ev, err := tp.Attest(ctx, n, []int{0, 7})
	if err != nil {
		t.Fatal(err)
	}
	res, err := tpm.Verify(ev, n, roots, inter)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	ek, _ := tp.EK(ctx)
	if res.EKHash != ek.Hash() || res.EKCAHash == "" || len(res.PCRs[7]) != 32 {
		t.Fatalf("result %+v", res)
	}
	// Credential activation binds the AK to the EK.
	ch, secret, err := tpm.NewChallenge(ev)
	if err != nil {
		t.Fatal(err)
	}
	answer, err := tp.ActivateCredential(ctx, ch)
	if err != nil {
		t.Fatalf("activate: %v", err)
	}
	if err := tpm.CheckActivation(secret, answer); err != nil {
		t.Fatal(err)
	}
	// A challenge naming another AK (here: the EK's own public area stands
	// in for a key this TPM does not have loaded as its AK) is refused.
	other := *ev
	other.AKArea = ev.EKArea
	badCh, badSecret, err := tpm.NewChallenge(&other)
	if err != nil {
		t.Fatal(err)
	}
	got, err := tp.ActivateCredential(ctx, badCh)
	if err == nil && tpm.CheckActivation(badSecret, got) == nil {
		t.Fatal("activation for another AK name succeeded")
	}
	if err == nil || !errors.Is(err, tpm.ErrActivation) {
		t.Fatalf("activation for another AK name: %v, want ErrActivation", err)
	}
	if err := tpm.CheckActivation(secret, bytes.Repeat([]byte{1}, 32)); !errors.Is(err, tpm.ErrActivation) {
		t.Fatalf("wrong answer: %v", err)
	}
	// Wrong nonce, tampered PCR, wrong roots: rejected.
	if _, err := tpm.Verify(ev, nonce(t), roots, inter); !errors.Is(err, tpm.ErrQuote) {
		t.Fatalf("wrong nonce: %v, want ErrQuote", err)
	}
	tampered := *ev
	tampered.PCRs = map[string]string{"0": ev.PCRs["0"], "7": hex.EncodeToString(make([]byte, 32))}
	if ev.PCRs["7"] == tampered.PCRs["7"] {
		tampered.PCRs["7"] = hex.EncodeToString(bytes.Repeat([]byte{0xff}, 32))
	}
	if _, err := tpm.Verify(&tampered, n, roots, inter); !errors.Is(err, tpm.ErrQuote) {
		t.Fatalf("tampered PCR: %v, want ErrQuote", err)
	}
	wrong := x509.NewCertPool()
	wrong.AddCert(selfSigned(t))
	if _, err := tpm.Verify(ev, n, wrong, nil); !errors.Is(err, tpm.ErrEKChain) {
		t.Fatalf("wrong roots: %v, want ErrEKChain", err)
	}
}

func TestExtendChangesQuotedPCR(t *testing.T) {
	t.Parallel()
	_, tp := swtpm.Start(t)
	ak, err := tp.AKPublic(ctx)
	if err != nil || len(ak) == 0 {
		t.Fatal(err)
	}
	n := nonce(t)
	before, err := tp.Quote(ctx, n, []int{7})
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("secure boot state changed"))
	if err := tp.ExtendPCR(ctx, 7, d[:]); err != nil {
		t.Fatal(err)
	}
	after, err := tp.Quote(ctx, n, []int{7})
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(append(append([]byte{}, before.PCRs[7]...), d[:]...))
	if !bytes.Equal(after.PCRs[7], want[:]) {
		t.Fatalf("PCR 7 after extend = %x, want %x", after.PCRs[7], want)
	}
	read, err := tp.ReadPCRs(ctx, []int{7})
	if err != nil || !bytes.Equal(read[7], want[:]) {
		t.Fatalf("ReadPCRs = %x, %v", read[7], err)
	}
}

func TestSigningKeySurvivesRestart(t *testing.T) {
	t.Parallel()
	sim, tp := swtpm.Start(t)
	k, err := tp.SigningKey(ctx, tpm.DefaultSigningKeyHandle)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("intermediate certificate"))
	sig, err := k.Sign(nil, digest[:], nil)
	if err != nil {
		t.Fatal(err)
	}
	pub := k.Public().(*ecdsa.PublicKey)
	if !ecdsa.VerifyASN1(pub, digest[:], sig) {
		t.Fatal("TPM signature does not verify")
	}
	sim.Stop(tp)
	_, tp2 := swtpm.StartOnState(t, sim.StateDir)
	k2, err := tp2.SigningKey(ctx, tpm.DefaultSigningKeyHandle)
	if err != nil {
		t.Fatal(err)
	}
	if !k2.Public().(*ecdsa.PublicKey).Equal(pub) {
		t.Fatal("the persisted key changed across a TPM restart")
	}
	// The AK's handle is not a signing key of the right kind: refused.
	if _, err := tp2.SigningKey(ctx, 0x81010001); !errors.Is(err, tpm.ErrUnsupported) {
		t.Fatalf("EK handle as signing key: %v, want ErrUnsupported", err)
	}
}

// TestManyOperationsFlushEverything: far more than three transient
// objects' worth of operations, from several goroutines: any leaked
// object would end in TPM_RC_OBJECT_MEMORY.
func TestManyOperationsFlushEverything(t *testing.T) {
	t.Parallel()
	_, tp := swtpm.Start(t)
	k, err := tp.SigningKey(ctx, tpm.DefaultSigningKeyHandle)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for range 4 {
		wg.Go(func() {
			for range 5 {
				n := make([]byte, 16)
				_, _ = rand.Read(n)
				if _, err := tp.Attest(ctx, n, []int{7}); err != nil {
					errs <- err
					return
				}
				d := sha256.Sum256(n)
				if _, err := k.Sign(nil, d[:], nil); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	for _, addr := range []string{"/dev/nonexistent-tpm", "tcp://127.0.0.1:1", "ftp://x", "unix:///nonexistent.sock"} {
		if _, err := tpm.Open(ctx, addr); !errors.Is(err, tpm.ErrOpen) {
			t.Errorf("Open(%q) = %v, want ErrOpen", addr, err)
		}
	}
}

// TestEKRecreatedFromCertificate: a TPM that keeps its RSA EK certificate
// in NV but no persistent EK (as many ship) gets the EK re-created from the
// TCG template: the same key as the certified one, and activation works.
// Without the RSA certificate either, the ECC EK is the one in use.
func TestEKRecreatedFromCertificate(t *testing.T) {
	t.Parallel()
	sim, tp := swtpm.Start(t)
	persisted, err := tp.EK(ctx)
	if err != nil || persisted.Type != "rsa" || !persisted.Persistent {
		t.Fatalf("first EK: %+v %v", persisted, err)
	}
	if err := tpm.EvictForTest(ctx, tp, 0x81010001); err != nil {
		t.Fatal(err)
	}
	ek, err := tp.EK(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ek.Type != "rsa" || ek.Persistent || ek.Hash() != persisted.Hash() || ek.Cert == nil {
		t.Fatalf("re-created EK: type %s persistent %v same key %v", ek.Type, ek.Persistent, ek.Hash() == persisted.Hash())
	}
	roots, inter := sim.Roots(t)
	n := nonce(t)
	ev, err := tp.Attest(ctx, n, []int{7})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := tpm.Verify(ev, n, roots, inter); err != nil || res.EKHash != persisted.Hash() {
		t.Fatalf("verify with the re-created EK: %v", err)
	}
	ch, secret, err := tpm.NewChallenge(ev)
	if err != nil {
		t.Fatal(err)
	}
	answer, err := tp.ActivateCredential(ctx, ch)
	if err != nil || tpm.CheckActivation(secret, answer) != nil {
		t.Fatalf("activation with the re-created EK: %v", err)
	}

	// No RSA EK at all: the ECC EK (here swtpm's persistent high-range one).
	if err := tpm.UndefineNVForTest(ctx, tp, 0x01c00002); err != nil {
		t.Fatal(err)
	}
	ecc, err := tp.EK(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ecc.Type != "ecc" || ecc.Cert == nil || ecc.Hash() == persisted.Hash() {
		t.Fatalf("EK without any RSA EK: type %s, cert %v", ecc.Type, ecc.Cert != nil)
	}
	if _, err := tpm.VerifyEKCert(ecc.Cert, inter, roots); err != nil {
		t.Fatalf("ECC EK chain: %v", err)
	}
	ev, err = tp.Attest(ctx, n, []int{7})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := tpm.Verify(ev, n, roots, inter); err != nil || res.EKHash != ecc.Hash() {
		t.Fatalf("verify with the ECC EK: %v", err)
	}
	// Activation with the high-range P-384 EK: with its auth value
	// (userWithAuth), and with the TCG policy (SHA-384 PolicySecret, then
	// PolicyOR of policies A and C), which only verifies if the digests are
	// the EK's.
	for name, activate := range map[string]func(context.Context, *tpm.Challenge) ([]byte, error){
		"auth value": tp.ActivateCredential,
		"EK policy": func(ctx context.Context, ch *tpm.Challenge) ([]byte, error) {
			return tpm.ActivateWithPolicyForTest(ctx, tp, ch)
		},
	} {
		ch, secret, err := tpm.NewChallenge(ev)
		if err != nil {
			t.Fatal(err)
		}
		answer, err := activate(ctx, ch)
		if err != nil || tpm.CheckActivation(secret, answer) != nil {
			t.Fatalf("activation with the high-range ECC EK (%s): %v", name, err)
		}
	}
}

// TestReopenAfterSimulatorRestart: a TPM opened by address survives its
// simulator restarting: the next operation reopens the connection; keys
// persisted in the TPM are still there.
func TestReopenAfterSimulatorRestart(t *testing.T) {
	t.Parallel()
	sim := swtpm.StartTCP(t)
	tp, err := tpm.Open(ctx, sim.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	k, err := tp.SigningKey(ctx, tpm.DefaultSigningKeyHandle)
	if err != nil {
		t.Fatal(err)
	}
	before, err := tp.EK(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sim.Restart(t)
	after, err := tp.EK(ctx)
	if err != nil {
		t.Fatalf("EK after the simulator restarted: %v", err)
	}
	if after.Hash() != before.Hash() {
		t.Fatal("another EK after reopening")
	}
	d := sha256.Sum256([]byte("after restart"))
	sig, err := k.Sign(nil, d[:], nil)
	if err != nil || !ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatalf("persisted key after reopening: %v", err)
	}
	if err := tp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tp.Ping(ctx); !errors.Is(err, tpm.ErrOpen) {
		t.Fatalf("Ping after Close: %v, want ErrOpen", err)
	}
}
