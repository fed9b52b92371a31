package tpm

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Errors of the explicit key functions below (a TPM root rotation).
var (
	// ErrNoKey: no object is persisted at the handle.
	ErrNoKey = errors.New("tpm: no key at the persistent handle")
	// ErrHandleInUse: an object is already persisted at the handle.
	ErrHandleInUse = errors.New("tpm: persistent handle in use")
)

// LoadSigningKey loads the signing key persisted at handle. Unlike
// SigningKey it never creates one: an empty handle is ErrNoKey, and an
// object there that is not a non-exportable, unrestricted ECC signing key
// is ErrUnsupported.
func (tp *TPM) LoadSigningKey(ctx context.Context, handle uint32) (*Signer, error) {
	h := tpm2.TPMHandle(handle)
	s := &Signer{tp: tp, handle: h}
	err := tp.do(ctx, func(t transport.TPM) error {
		rp, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(t)
		if err != nil {
			if isTPMError(err) {
				return fmt.Errorf("%w: %#x", ErrNoKey, handle)
			}
			return fmt.Errorf("read signing key at %#x: %w", handle, err)
		}
		return s.adopt(rp.OutPublic, rp.Name, handle)
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// CreateSigningKey creates a new non-exportable ECC P-256 signing key under
// the owner hierarchy's storage root key and persists it at handle. An
// object already at handle is ErrHandleInUse: it is never overwritten.
func (tp *TPM) CreateSigningKey(ctx context.Context, handle uint32) (*Signer, error) {
	h := tpm2.TPMHandle(handle)
	s := &Signer{tp: tp, handle: h}
	err := tp.do(ctx, func(t transport.TPM) error {
		if _, err := (tpm2.ReadPublic{ObjectHandle: h}).Execute(t); err == nil {
			return fmt.Errorf("%w: %#x", ErrHandleInUse, handle)
		} else if !isTPMError(err) {
			return fmt.Errorf("read handle %#x: %w", handle, err)
		}
		return s.createPersistent(t, h)
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// EvictSigningKey removes the signing key persisted at handle from the
// TPM (EvictControl): the key is gone for good. An empty handle is no
// error; an object there that is not a non-exportable, unrestricted ECC
// signing key (not one this package made) is ErrUnsupported and stays.
func (tp *TPM) EvictSigningKey(ctx context.Context, handle uint32) error {
	h := tpm2.TPMHandle(handle)
	return tp.do(ctx, func(t transport.TPM) error {
		rp, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(t)
		if err != nil {
			if isTPMError(err) {
				return nil
			}
			return fmt.Errorf("read signing key at %#x: %w", handle, err)
		}
		if err := (&Signer{}).adopt(rp.OutPublic, rp.Name, handle); err != nil {
			return err
		}
		if _, err := (tpm2.EvictControl{
			Auth:             tpm2.TPMRHOwner,
			ObjectHandle:     &tpm2.NamedHandle{Handle: h, Name: rp.Name},
			PersistentHandle: h,
		}).Execute(t); err != nil {
			return fmt.Errorf("evict signing key at %#x: %w", handle, err)
		}
		return nil
	})
}
