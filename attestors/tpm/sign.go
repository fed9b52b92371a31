package tpm

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"encoding/asn1"
	"fmt"
	"io"
	"math/big"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// DefaultSigningKeyHandle is where SigningKey persists the CA key.
const DefaultSigningKeyHandle = 0x81000100

// Signer is a non-exportable ECC P-256 key persisted in the TPM. It
// implements crypto.Signer; each Sign is one TPM command under the TPM's
// lock, so keep it off request paths.
type Signer struct {
	tp     *TPM
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	pub    *ecdsa.PublicKey
}

// SigningKey loads the signing key persisted at handle, or creates one
// there (under the owner hierarchy's ECC storage root key, then made
// persistent with EvictControl). An object at handle that is not such a key
// is an error, never overwritten.
func (tp *TPM) SigningKey(ctx context.Context, handle uint32) (*Signer, error) {
	h := tpm2.TPMHandle(handle)
	s := &Signer{tp: tp, handle: h}
	err := tp.do(ctx, func(t transport.TPM) error {
		rp, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(t)
		if err == nil {
			return s.adopt(rp.OutPublic, rp.Name, handle)
		}
		if !isTPMError(err) {
			return fmt.Errorf("read signing key at %#x: %w", handle, err)
		}
		return s.createPersistent(t, h)
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// createPersistent creates a non-exportable ECC P-256 signing key under
// the owner hierarchy's ECC storage root key, persists it at h with
// EvictControl and adopts it.
func (s *Signer) createPersistent(t transport.TPM, h tpm2.TPMHandle) error {
	srk, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(t)
	if err != nil {
		return fmt.Errorf("create storage root key: %w", err)
	}
	defer flush(t, srk.ObjectHandle)
	parent := tpm2.AuthHandle{Handle: srk.ObjectHandle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)}
	created, err := tpm2.Create{ParentHandle: parent, InPublic: tpm2.New2B(eccSigningTemplate(false))}.Execute(t)
	if err != nil {
		return fmt.Errorf("create signing key: %w", err)
	}
	loaded, err := tpm2.Load{ParentHandle: parent, InPrivate: created.OutPrivate, InPublic: created.OutPublic}.Execute(t)
	if err != nil {
		return fmt.Errorf("load signing key: %w", err)
	}
	defer flush(t, loaded.ObjectHandle)
	if _, err := (tpm2.EvictControl{
		Auth:             tpm2.TPMRHOwner,
		ObjectHandle:     &tpm2.NamedHandle{Handle: loaded.ObjectHandle, Name: loaded.Name},
		PersistentHandle: h,
	}).Execute(t); err != nil {
		return fmt.Errorf("persist signing key at %#x: %w", uint32(h), err)
	}
	return s.adopt(created.OutPublic, loaded.Name, uint32(h))
}

func (s *Signer) adopt(p tpm2.TPM2BPublic, name tpm2.TPM2BName, handle uint32) error {
	area, err := p.Contents()
	if err != nil {
		return fmt.Errorf("signing key at %#x: %w", handle, err)
	}
	a := area.ObjectAttributes
	if area.Type != tpm2.TPMAlgECC || a.Restricted || !a.SignEncrypt || a.Decrypt || !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin {
		return fmt.Errorf("%w: object at %#x is not a non-exportable, unrestricted ECC signing key", ErrUnsupported, handle)
	}
	pub, err := tpm2.Pub(*area)
	if err != nil {
		return fmt.Errorf("signing key at %#x: %w", handle, err)
	}
	ep, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return fmt.Errorf("%w: signing key at %#x is not ECDSA", ErrUnsupported, handle)
	}
	s.pub, s.name = ep, name
	return nil
}

// Public returns the key's public half (*ecdsa.PublicKey).
func (s *Signer) Public() crypto.PublicKey { return s.pub }

// Sign signs a SHA-256 digest in the TPM and returns an ASN.1 DER ECDSA
// signature. rand is unused (the TPM has its own).
func (s *Signer) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts != nil && opts.HashFunc() != crypto.SHA256 {
		return nil, fmt.Errorf("%w: TPM key signs SHA-256 digests, not %v", ErrUnsupported, opts.HashFunc())
	}
	var sig []byte
	err := s.tp.do(context.Background(), func(t transport.TPM) error {
		rsp, err := tpm2.Sign{
			KeyHandle:  tpm2.AuthHandle{Handle: s.handle, Name: s.name, Auth: tpm2.PasswordAuth(nil)},
			Digest:     tpm2.TPM2BDigest{Buffer: digest},
			InScheme:   ecdsaScheme,
			Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
		}.Execute(t)
		if err != nil {
			return fmt.Errorf("TPM sign: %w", err)
		}
		sig, err = ecdsaSignature(&rsp.Signature)
		return err
	})
	return sig, err
}

func asn1ECDSA(r, s *big.Int) ([]byte, error) {
	return asn1.Marshal(struct{ R, S *big.Int }{r, s})
}
