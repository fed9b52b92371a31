package tpm

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Challenge is a credential-activation challenge (TPM2_MakeCredential's
// output, made in software by the verifier): only the TPM holding the EK,
// with a loaded key of exactly the named AK, can recover its secret.
type Challenge struct {
	CredentialBlob []byte `json:"credential_blob"`
	Secret         []byte `json:"encrypted_secret"`
}

// NewChallenge makes a challenge for the EK and AK of ev (whose EK and AK
// public areas the caller has verified with Verify). It returns the
// challenge for the attester and the secret to compare its answer with.
func NewChallenge(ev *Evidence) (*Challenge, []byte, error) {
	ek, err := tpm2.Unmarshal[tpm2.TPMTPublic](ev.EKArea)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: EK public area: %v", ErrEvidence, err)
	}
	ak, err := tpm2.Unmarshal[tpm2.TPMTPublic](ev.AKArea)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: AK public area: %v", ErrEvidence, err)
	}
	return challengeFor(ek, ak)
}

func challengeFor(ek, ak *tpm2.TPMTPublic) (*Challenge, []byte, error) {
	key, err := tpm2.ImportEncapsulationKey(ek)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: EK cannot encapsulate: %v", ErrUnsupported, err)
	}
	name, err := tpm2.ObjectName(ak)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: AK name: %v", ErrEvidence, err)
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, nil, fmt.Errorf("challenge secret: %w", err)
	}
	blob, enc, err := tpm2.CreateCredential(rand.Reader, key, name.Buffer, secret)
	if err != nil {
		return nil, nil, fmt.Errorf("make credential: %w", err)
	}
	return &Challenge{CredentialBlob: blob, Secret: enc}, secret, nil
}

// ActivateCredential answers a challenge: the TPM decrypts it with the EK
// (under the EK's policy: PolicySecret of the endorsement hierarchy) and
// releases the secret only if the challenge names this TPM's AK. EKs of the
// TCG low-range templates (RSA 2048, ECC P-256; persistent or re-created)
// are supported; the high-range P-384 EK is not.
func (tp *TPM) ActivateCredential(ctx context.Context, ch *Challenge) ([]byte, error) {
	var out []byte
	err := tp.do(ctx, func(t transport.TPM) error {
		ek, err := readEK(t)
		if err != nil {
			return err
		}
		defer ek.release(t)
		if ek.handle == eccHiEKHandle {
			// The high-range P-384 EK's policy (PolicyOR of SHA-384 branches)
			// is not implemented.
			return fmt.Errorf("%w: credential activation with the high-range P-384 EK", ErrUnsupported)
		}
		ak, err := createAK(t)
		if err != nil {
			return err
		}
		defer flush(t, ak.handle)
		rsp, err := tpm2.ActivateCredential{
			ActivateHandle: ak.auth(),
			KeyHandle: tpm2.AuthHandle{Handle: ek.handle, Name: ek.name,
				Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, ekPolicy)},
			CredentialBlob: tpm2.TPM2BIDObject{Buffer: ch.CredentialBlob},
			Secret:         tpm2.TPM2BEncryptedSecret{Buffer: ch.Secret},
		}.Execute(t)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrActivation, err)
		}
		out = rsp.CertInfo.Buffer
		return nil
	})
	return out, err
}

// ekPolicy satisfies the TCG EK policy (PolicySecret(TPM_RH_ENDORSEMENT)).
func ekPolicy(t transport.TPM, handle tpm2.TPMISHPolicy, nonceTPM tpm2.TPM2BNonce) error {
	_, err := tpm2.PolicySecret{AuthHandle: tpm2.TPMRHEndorsement, PolicySession: handle, NonceTPM: nonceTPM}.Execute(t)
	return err
}

// CheckActivation compares the attester's answer with the challenge's
// secret in constant time.
func CheckActivation(secret, answer []byte) error {
	if len(secret) == 0 || subtle.ConstantTimeCompare(secret, answer) != 1 {
		return fmt.Errorf("%w: wrong answer to the challenge", ErrActivation)
	}
	return nil
}
