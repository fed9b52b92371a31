package tpm

import (
	"context"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// EvictForTest removes a persistent object (tests only: to run a TPM
// without its RSA EK).
func EvictForTest(ctx context.Context, tp *TPM, handle uint32) error {
	return tp.do(ctx, func(t transport.TPM) error {
		rp, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(handle)}.Execute(t)
		if err != nil {
			return err
		}
		_, err = tpm2.EvictControl{
			Auth:             tpm2.TPMRHOwner,
			ObjectHandle:     &tpm2.NamedHandle{Handle: tpm2.TPMHandle(handle), Name: rp.Name},
			PersistentHandle: tpm2.TPMHandle(handle),
		}.Execute(t)
		return err
	})
}

// UndefineNVForTest deletes an NV index with platform authorization (tests
// only: to run a TPM without an EK certificate).
func UndefineNVForTest(ctx context.Context, tp *TPM, index uint32) error {
	return tp.do(ctx, func(t transport.TPM) error {
		rp, err := tpm2.NVReadPublic{NVIndex: tpm2.TPMHandle(index)}.Execute(t)
		if err != nil {
			return err
		}
		_, err = tpm2.NVUndefineSpace{
			AuthHandle: tpm2.TPMRHPlatform,
			NVIndex:    tpm2.NamedHandle{Handle: tpm2.TPMHandle(index), Name: rp.NVName},
		}.Execute(t)
		return err
	})
}

// ActivateWithPolicyForTest answers a challenge authorizing the EK with its
// TCG policy session even when its auth value would do (tests only: swtpm's
// high-range EK has userWithAuth set).
func ActivateWithPolicyForTest(ctx context.Context, tp *TPM, ch *Challenge) ([]byte, error) {
	return tp.activate(ctx, ch, true)
}

// ClearForTest runs TPM2_Clear with platform authorization (tests only: a
// new storage seed makes the TPM another TPM for keys sealed to its SRK).
func ClearForTest(ctx context.Context, tp *TPM) error {
	return tp.do(ctx, func(t transport.TPM) error {
		_, err := tpm2.Clear{AuthHandle: tpm2.TPMRHPlatform}.Execute(t)
		return err
	})
}
