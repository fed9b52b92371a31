package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/asn1"
	"errors"
	"io"
	"math/big"
	"testing"
)

// FakeOversizedSigner stands for a misbehaving key device (a TPM returning
// a malformed signature): no real device can be made to do that here. It
// returns a well-formed ASN.1 ECDSA signature whose r does not fit in 32
// bytes.
type FakeOversizedSigner struct{ pub crypto.PublicKey }

func (f FakeOversizedSigner) Public() crypto.PublicKey { return f.pub }

func (FakeOversizedSigner) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	r := new(big.Int).Lsh(big.NewInt(1), 300)
	return asn1.Marshal(struct{ R, S *big.Int }{r, big.NewInt(1)})
}

// TestJWTSignerRefusesMalformedSignature: go-jose copies r and s into
// 32-byte halves and would panic on an oversized r; the CA's signer
// refuses it with an error instead.
func TestJWTSignerRefusesMalformedSignature(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	kid, err := keyID(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	j, err := newJOSESigner(FakeOversizedSigner{&key.PublicKey}, kid)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := signJWS(&jwtSigner{kid: kid, jose: j}, []byte(`{}`)); !errors.Is(err, ErrCorruptFile) {
		t.Fatalf("signJWS with a malformed signature: %v, want ErrCorruptFile", err)
	}
	good, err := newJOSESigner(key, kid)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := signJWS(&jwtSigner{kid: kid, jose: good}, []byte(`{}`)); err != nil {
		t.Fatalf("signJWS with a good key: %v", err)
	}
}
