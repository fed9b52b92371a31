package tpm

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"math/big"
	"slices"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Quote is a TPM quote over sha256-bank PCRs and the values it covers.
type Quote struct {
	// Attest is the TPMS_ATTEST structure the AK signed, marshalled.
	Attest []byte
	// Signature is the AK's ECDSA signature over SHA-256(Attest), ASN.1 DER.
	Signature []byte
	// PCRs are the quoted PCR values by index.
	PCRs map[int][]byte
}

// createAK creates the attestation key as a primary key of the endorsement
// hierarchy: the same template under the same seed gives the same key, so
// the AK (and its name, which credential activation binds to the EK) is
// stable across restarts without being stored anywhere.
func createAK(t transport.TPM) (*loadedKey, error) {
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(akTemplate),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("create AK: %w", err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		flush(t, rsp.ObjectHandle)
		return nil, fmt.Errorf("AK public area: %w", err)
	}
	return &loadedKey{handle: rsp.ObjectHandle, name: rsp.Name, public: pub, area: tpm2.Marshal(pub)}, nil
}

// pcrSelection selects pcrs in the sha256 bank.
func pcrSelection(pcrs []int) tpm2.TPMLPCRSelection {
	u := make([]uint, len(pcrs))
	for i, p := range pcrs {
		u[i] = uint(p)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(u...),
	}}}
}

// sortedPCRs validates and sorts PCR indexes (0-23, no duplicates).
func sortedPCRs(pcrs []int) ([]int, error) {
	s := slices.Clone(pcrs)
	slices.Sort(s)
	for i, p := range s {
		if p < 0 || p > 23 || (i > 0 && s[i-1] == p) {
			return nil, fmt.Errorf("tpm: PCR indexes must be distinct and 0-23, got %v", pcrs)
		}
	}
	return s, nil
}

// ReadPCRs reads sha256-bank PCR values.
func (tp *TPM) ReadPCRs(ctx context.Context, pcrs []int) (map[int][]byte, error) {
	sorted, err := sortedPCRs(pcrs)
	if err != nil {
		return nil, err
	}
	var out map[int][]byte
	err = tp.do(ctx, func(t transport.TPM) error {
		out, err = readPCRs(t, sorted)
		return err
	})
	return out, err
}

// readPCRs reads pcrs (sorted); a TPM may return fewer per call than asked.
func readPCRs(t transport.TPM, pcrs []int) (map[int][]byte, error) {
	out := make(map[int][]byte, len(pcrs))
	for len(out) < len(pcrs) {
		var want []int
		for _, p := range pcrs {
			if _, ok := out[p]; !ok {
				want = append(want, p)
			}
		}
		rsp, err := tpm2.PCRRead{PCRSelectionIn: pcrSelection(want)}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("PCR read: %w", err)
		}
		got := selected(rsp.PCRSelectionOut)
		if len(got) == 0 || len(got) != len(rsp.PCRValues.Digests) {
			return nil, fmt.Errorf("PCR read: TPM returned %d values for selection %v", len(rsp.PCRValues.Digests), got)
		}
		for i, p := range got {
			out[p] = slices.Clone(rsp.PCRValues.Digests[i].Buffer)
		}
	}
	return out, nil
}

// selected lists the sha256-bank PCR indexes of a selection, ascending.
func selected(sel tpm2.TPMLPCRSelection) []int {
	var out []int
	for _, s := range sel.PCRSelections {
		if s.Hash != tpm2.TPMAlgSHA256 {
			continue
		}
		for i, b := range s.PCRSelect {
			for bit := 0; bit < 8; bit++ {
				if b&(1<<bit) != 0 {
					out = append(out, i*8+bit)
				}
			}
		}
	}
	return out
}

// ExtendPCR extends a sha256-bank PCR with digest (32 bytes).
func (tp *TPM) ExtendPCR(ctx context.Context, index int, digest []byte) error {
	if index < 0 || index > 23 || len(digest) != sha256.Size {
		return fmt.Errorf("tpm: extend PCR %d: want index 0-23 and a 32-byte digest", index)
	}
	return tp.do(ctx, func(t transport.TPM) error {
		_, err := tpm2.PCRExtend{
			PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(index), Auth: tpm2.PasswordAuth(nil)},
			Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: digest}}},
		}.Execute(t)
		if err != nil {
			return fmt.Errorf("extend PCR %d: %w", index, err)
		}
		return nil
	})
}

// AKPublic returns the attestation key's TPMT_PUBLIC, marshalled.
func (tp *TPM) AKPublic(ctx context.Context) ([]byte, error) {
	var area []byte
	err := tp.do(ctx, func(t transport.TPM) error {
		ak, err := createAK(t)
		if err != nil {
			return err
		}
		flush(t, ak.handle)
		area = ak.area
		return nil
	})
	return area, err
}

// Quote quotes the sha256-bank pcrs with nonce as qualifying data and reads
// their values. A PCR that changes between the quote and the read is
// caught by checking the digest here, and the pair is taken again.
func (tp *TPM) Quote(ctx context.Context, nonce []byte, pcrs []int) (*Quote, error) {
	sorted, err := sortedPCRs(pcrs)
	if err != nil {
		return nil, err
	}
	if len(sorted) == 0 {
		return nil, fmt.Errorf("tpm: quote: no PCRs selected")
	}
	var q *Quote
	err = tp.do(ctx, func(t transport.TPM) error {
		ak, err := createAK(t)
		if err != nil {
			return err
		}
		defer flush(t, ak.handle)
		akPub, err := tpm2.Pub(*ak.public)
		if err != nil {
			return fmt.Errorf("AK public key: %w", err)
		}
		for range 3 {
			if q, err = quote(t, ak, nonce, sorted); err != nil {
				return err
			}
			if _, err = VerifyQuote(akPub, q, nonce, sorted); err == nil {
				return nil
			}
		}
		return err
	})
	return q, err
}

func quote(t transport.TPM, ak *loadedKey, nonce []byte, pcrs []int) (*Quote, error) {
	rsp, err := tpm2.Quote{
		SignHandle:     ak.auth(),
		QualifyingData: tpm2.TPM2BData{Buffer: nonce},
		InScheme:       ecdsaScheme,
		PCRSelect:      pcrSelection(pcrs),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("quote: %w", err)
	}
	sig, err := ecdsaSignature(&rsp.Signature)
	if err != nil {
		return nil, fmt.Errorf("quote: %w", err)
	}
	values, err := readPCRs(t, pcrs)
	if err != nil {
		return nil, err
	}
	return &Quote{Attest: slices.Clone(rsp.Quoted.Bytes()), Signature: sig, PCRs: values}, nil
}

// ecdsaSignature converts a TPMT_SIGNATURE to ASN.1 DER.
func ecdsaSignature(s *tpm2.TPMTSignature) ([]byte, error) {
	e, err := s.Signature.ECDSA()
	if err != nil {
		return nil, err
	}
	r := new(big.Int).SetBytes(e.SignatureR.Buffer)
	ss := new(big.Int).SetBytes(e.SignatureS.Buffer)
	return asn1ECDSA(r, ss)
}

// VerifyQuote verifies q in software: the AK's signature over the attest
// structure, the TPM_GENERATED magic and quote type, the nonce, that the
// quote covers exactly pcrs (sha256 bank), and that the PCR digest is the
// SHA-256 of q.PCRs in index order. It returns the verified PCR values.
func VerifyQuote(akPub any, q *Quote, nonce []byte, pcrs []int) (map[int][]byte, error) {
	pub, ok := akPub.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: AK is not an ECDSA key", ErrQuote)
	}
	sorted, err := sortedPCRs(pcrs)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrQuote, err)
	}
	digest := sha256.Sum256(q.Attest)
	if !ecdsa.VerifyASN1(pub, digest[:], q.Signature) {
		return nil, fmt.Errorf("%w: signature does not verify with the AK", ErrQuote)
	}
	att, err := tpm2.Unmarshal[tpm2.TPMSAttest](q.Attest)
	if err != nil {
		return nil, fmt.Errorf("%w: attest structure: %v", ErrQuote, err)
	}
	if att.Magic != tpm2.TPMGeneratedValue || att.Type != tpm2.TPMSTAttestQuote {
		return nil, fmt.Errorf("%w: not a TPM-generated quote", ErrQuote)
	}
	if subtle.ConstantTimeCompare(att.ExtraData.Buffer, nonce) != 1 {
		return nil, fmt.Errorf("%w: nonce does not match", ErrQuote)
	}
	info, err := att.Attested.Quote()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrQuote, err)
	}
	if got := selected(info.PCRSelect); !slices.Equal(got, sorted) || len(info.PCRSelect.PCRSelections) != 1 {
		return nil, fmt.Errorf("%w: quote covers PCRs %v, want %v", ErrQuote, got, sorted)
	}
	h := sha256.New()
	for _, p := range sorted {
		v, ok := q.PCRs[p]
		if !ok || len(v) != sha256.Size {
			return nil, fmt.Errorf("%w: no sha256 value for PCR %d", ErrQuote, p)
		}
		h.Write(v)
	}
	if subtle.ConstantTimeCompare(h.Sum(nil), info.PCRDigest.Buffer) != 1 {
		return nil, fmt.Errorf("%w: PCR values do not match the quoted digest", ErrQuote)
	}
	out := make(map[int][]byte, len(sorted))
	for _, p := range sorted {
		out[p] = slices.Clone(q.PCRs[p])
	}
	return out, nil
}
