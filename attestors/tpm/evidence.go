package tpm

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"

	"github.com/google/go-tpm/tpm2"
)

// Evidence is the node-attestation document (`nodeward node attest`):
// everything a remote verifier needs, as JSON. Byte fields are base64.
type Evidence struct {
	// EKPublic is the EK's DER SubjectPublicKeyInfo.
	EKPublic []byte `json:"ek_public"`
	// EKArea is the EK's TPMT_PUBLIC (for MakeCredential).
	EKArea []byte `json:"ek_tpmt_public"`
	// EKCertChain is the EK certificate (DER) first, then intermediates.
	EKCertChain [][]byte `json:"ek_cert_chain"`
	// AKArea is the attestation key's TPMT_PUBLIC (its name is bound to the
	// EK by credential activation).
	AKArea []byte `json:"ak_tpmt_public"`
	// Quote is the TPMS_ATTEST the AK signed; Signature is ASN.1 ECDSA.
	Quote     []byte `json:"quote"`
	Signature []byte `json:"signature"`
	// PCRBank is "sha256"; PCRs maps indexes to hex values.
	PCRBank string            `json:"pcr_bank"`
	PCRs    map[string]string `json:"pcrs"`
}

// Result is what Verify established.
type Result struct {
	EKHash   string         // tpm:ek-hash
	EKCAHash string         // tpm:ek-ca; "" when no roots were given
	PCRs     map[int][]byte // verified PCR values
}

// Attest produces evidence for nonce over pcrs (sha256 bank).
func (tp *TPM) Attest(ctx context.Context, nonce []byte, pcrs []int) (*Evidence, error) {
	ek, err := tp.EK(ctx)
	if err != nil {
		return nil, err
	}
	q, err := tp.Quote(ctx, nonce, pcrs)
	if err != nil {
		return nil, err
	}
	ak, err := tp.AKPublic(ctx)
	if err != nil {
		return nil, err
	}
	spki, err := x509.MarshalPKIXPublicKey(ek.Public)
	if err != nil {
		return nil, fmt.Errorf("EK public key: %w", err)
	}
	ev := &Evidence{EKPublic: spki, EKArea: ek.Area, AKArea: ak, Quote: q.Attest, Signature: q.Signature,
		PCRBank: "sha256", PCRs: map[string]string{}, EKCertChain: [][]byte{}}
	if ek.Cert != nil {
		ev.EKCertChain = append(ev.EKCertChain, ek.Cert.Raw)
	}
	for i, v := range q.PCRs {
		ev.PCRs[strconv.Itoa(i)] = hex.EncodeToString(v)
	}
	return ev, nil
}

// Verify checks evidence for nonce: the EK public area matches the EK key
// and certificate, the EK chain verifies against roots (skipped when roots
// is nil), the AK is a restricted, non-exportable signing key, and the
// quote verifies (signature, nonce, PCR digest). It does not bind the AK to
// the EK: run NewChallenge / ActivateCredential / CheckActivation for that.
func Verify(ev *Evidence, nonce []byte, roots *x509.CertPool, intermediates []*x509.Certificate) (*Result, error) {
	ekPub, err := x509.ParsePKIXPublicKey(ev.EKPublic)
	if err != nil {
		return nil, fmt.Errorf("%w: ek_public: %v", ErrEvidence, err)
	}
	ekArea, err := tpm2.Unmarshal[tpm2.TPMTPublic](ev.EKArea)
	if err != nil {
		return nil, fmt.Errorf("%w: ek_tpmt_public: %v", ErrEvidence, err)
	}
	if areaPub, err := tpm2.Pub(*ekArea); err != nil || !samePublic(areaPub, ekPub) {
		return nil, fmt.Errorf("%w: ek_tpmt_public is not the key in ek_public", ErrEvidence)
	}
	res := &Result{}
	if res.EKHash, err = EKHash(ekPub); err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for i, der := range ev.EKCertChain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%w: ek_cert_chain[%d]: %v", ErrEvidence, i, err)
		}
		certs = append(certs, c)
	}
	if len(certs) > 0 && !samePublic(certs[0].PublicKey, ekPub) {
		return nil, fmt.Errorf("%w: the EK certificate is for another key", ErrEvidence)
	}
	if roots != nil {
		if len(certs) == 0 {
			return nil, fmt.Errorf("%w: no EK certificate in the evidence", ErrEKChain)
		}
		if res.EKCAHash, err = VerifyEKCert(certs[0], append(slices.Clone(certs[1:]), intermediates...), roots); err != nil {
			return nil, err
		}
	}
	akArea, err := tpm2.Unmarshal[tpm2.TPMTPublic](ev.AKArea)
	if err != nil {
		return nil, fmt.Errorf("%w: ak_tpmt_public: %v", ErrEvidence, err)
	}
	a := akArea.ObjectAttributes
	if !a.Restricted || !a.SignEncrypt || a.Decrypt || !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin {
		return nil, fmt.Errorf("%w: the AK is not a restricted, non-exportable signing key", ErrEvidence)
	}
	akPub, err := tpm2.Pub(*akArea)
	if err != nil {
		return nil, fmt.Errorf("%w: AK public key: %v", ErrEvidence, err)
	}
	if ev.PCRBank != "sha256" {
		return nil, fmt.Errorf("%w: pcr_bank %q, want sha256", ErrEvidence, ev.PCRBank)
	}
	q := &Quote{Attest: ev.Quote, Signature: ev.Signature, PCRs: map[int][]byte{}}
	var pcrs []int
	for k, v := range ev.PCRs {
		i, err := strconv.Atoi(k)
		b, herr := hex.DecodeString(v)
		if err != nil || herr != nil {
			return nil, fmt.Errorf("%w: pcrs[%q]", ErrEvidence, k)
		}
		q.PCRs[i] = b
		pcrs = append(pcrs, i)
	}
	if res.PCRs, err = VerifyQuote(akPub, q, nonce, pcrs); err != nil {
		return nil, err
	}
	return res, nil
}

// samePublic compares two public keys (every crypto public key type of the
// standard library has Equal).
func samePublic(a, b any) bool {
	ea, ok := a.(interface{ Equal(x crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}
