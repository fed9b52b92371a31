package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
)

// jwtSignBench is what both JWT signing benchmarks share: one P-256 key
// behind a crypto.Signer, its kid, and the claims of a JWT-SVID.
type jwtSignBench struct {
	key    *ecdsa.PrivateKey
	kid    string
	claims jwtClaims
}

func newJWTSignBench(b *testing.B) *jwtSignBench {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	kid, err := keyID(&key.PublicKey)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	return &jwtSignBench{key: key, kid: kid, claims: jwtClaims{Sub: webID.String(), Aud: []string{"aud"},
		Exp: now.Add(time.Minute).Unix(), Iat: now.Unix(), JTI: "0123456789abcdef0123456789abcdef"}}
}

// check validates one token of either signer with go-spiffe, so both
// benchmarks measure a token a workload accepts.
func (s *jwtSignBench) check(b *testing.B, token string) {
	bundle := jwtbundle.New(td)
	if err := bundle.AddJWTAuthority(s.kid, &s.key.PublicKey); err != nil {
		b.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(token, bundle, []string{"aud"}); err != nil {
		b.Fatalf("go-spiffe refused the token: %v", err)
	}
}

// BenchmarkJWTSignHandMade is the CA's former signer (signJWSHandMade):
// claims marshalled, then the precomputed header, payload and an ES256
// signature through the crypto.Signer.
func BenchmarkJWTSignHandMade(b *testing.B) {
	s := newJWTSignBench(b)
	hdr, err := handMadeHeader(s.kid)
	if err != nil {
		b.Fatal(err)
	}
	sign := func() string {
		payload, err := json.Marshal(s.claims)
		if err != nil {
			b.Fatal(err)
		}
		token, err := signJWSHandMade(s.key, hdr, payload)
		if err != nil {
			b.Fatal(err)
		}
		return token
	}
	s.check(b, sign())
	b.ReportAllocs()
	for b.Loop() {
		sign()
	}
}

// BenchmarkJWTSignGoJose signs the same claims with go-jose v4 over the same
// crypto.Signer wrapped by cryptosigner.Opaque (what SPIRE does); the
// jose.Signer is made once, as the hand-made header is. This is the CA's
// signer since the benchmark (signJWS adds only checkedSigner's ASN.1
// check).
func BenchmarkJWTSignGoJose(b *testing.B) {
	s := newJWTSignBench(b)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: cryptosigner.Opaque(s.key)},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", s.kid))
	if err != nil {
		b.Fatal(err)
	}
	sign := func() string {
		payload, err := json.Marshal(s.claims)
		if err != nil {
			b.Fatal(err)
		}
		obj, err := signer.Sign(payload)
		if err != nil {
			b.Fatal(err)
		}
		token, err := obj.CompactSerialize()
		if err != nil {
			b.Fatal(err)
		}
		return token
	}
	s.check(b, sign())
	b.ReportAllocs()
	for b.Loop() {
		sign()
	}
}

// handMadeHeader is the base64url JOSE header for kid, as the hand-made
// signer precomputed it.
func handMadeHeader(kid string) (string, error) {
	hdr, err := json.Marshal(struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}{"ES256", kid, "JWT"})
	if err != nil {
		return "", fmt.Errorf("jwt header: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(hdr), nil
}

// signJWSHandMade is the JWS signer the CA used before go-jose, kept for
// the benchmark: header.payload.signature with an ES256 signature (r and s
// as fixed 32-byte big-endian integers, RFC 7518 section 3.4) converted
// from the crypto.Signer's ASN.1.
func signJWSHandMade(signer crypto.Signer, header string, payload []byte) (string, error) {
	enc := base64.RawURLEncoding
	buf := make([]byte, 0, len(header)+1+enc.EncodedLen(len(payload))+1+enc.EncodedLen(64))
	buf = append(buf, header...)
	buf = append(buf, '.')
	buf = enc.AppendEncode(buf, payload)
	digest := sha256.Sum256(buf)
	der, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	var rs struct{ R, S *big.Int }
	rest, err := asn1.Unmarshal(der, &rs)
	if err != nil || len(rest) != 0 || rs.R == nil || rs.S == nil ||
		rs.R.Sign() <= 0 || rs.S.Sign() <= 0 || rs.R.BitLen() > 256 || rs.S.BitLen() > 256 {
		return "", fmt.Errorf("sign: %w: the signer returned a malformed ECDSA signature", ErrCorruptFile)
	}
	var sig [64]byte
	rs.R.FillBytes(sig[:32])
	rs.S.FillBytes(sig[32:])
	buf = append(buf, '.')
	buf = enc.AppendEncode(buf, sig[:])
	return string(buf), nil
}
