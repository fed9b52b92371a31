package tpm

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"slices"

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
// TCG low-range (SHA-256 policy) and high-range (SHA-384 PolicyOR)
// templates are supported, persistent or re-created.
func (tp *TPM) ActivateCredential(ctx context.Context, ch *Challenge) ([]byte, error) {
	return tp.activate(ctx, ch, false)
}

func (tp *TPM) activate(ctx context.Context, ch *Challenge, forcePolicy bool) ([]byte, error) {
	return tp.activateWith(ctx, ch, readEK, createAK, forcePolicy)
}

// activateWith runs TPM2_ActivateCredential for ch with the EK readEK
// finds and the AK createAK makes (the AK the challenge names).
func (tp *TPM) activateWith(ctx context.Context, ch *Challenge, readEK func(transport.TPM) (*EK, error),
	createAK func(transport.TPM) (*loadedKey, error), forcePolicy bool) ([]byte, error) {
	var out []byte
	err := tp.do(ctx, func(t transport.TPM) error {
		ek, err := readEK(t)
		if err != nil {
			return err
		}
		defer ek.release(t)
		auth, err := ekAuth(ek.area)
		if forcePolicy {
			auth, err = ekPolicy(ek.area)
		}
		if err != nil {
			return err
		}
		ak, err := createAK(t)
		if err != nil {
			return err
		}
		defer flush(t, ak.handle)
		rsp, err := tpm2.ActivateCredential{
			ActivateHandle: ak.auth(),
			KeyHandle:      tpm2.AuthHandle{Handle: ek.handle, Name: ek.name, Auth: auth},
			CredentialBlob: tpm2.TPM2BIDObject{Buffer: ch.CredentialBlob},
			Secret:         tpm2.TPM2BEncryptedSecret{Buffer: ch.Secret},
		}.Execute(t)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrActivation, err)
		}
		out = slices.Clone(rsp.CertInfo.Buffer)
		return nil
	})
	return out, err
}

// TCG EK Credential Profile policy digests for the high-range templates
// with SHA-384 names: PolicyA = PolicySecret(TPM_RH_ENDORSEMENT), PolicyC =
// PolicyAuthorizeNV of the EK policy index; the EK's authPolicy is
// PolicyB = PolicyOR(PolicyA, PolicyC). Checked against a real EK:
// TestEKPolicyDigests recomputes PolicyA and PolicyB from these.
var (
	ekPolicyASHA384 = mustHex("8bbf2266537c171cb56e403c4dc1d4b64f432611dc386e6f532050c3278c930e143e8bb1133824ccb431053871c6db53")
	ekPolicyCSHA384 = mustHex("d6032ce61f2fb3c240eb3cf6a33237ef2b6a16f4293c22b455e261cffd217ad5b4947c2d73e63005eed2dc2b3593d165")
)

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// ekAuth authorizes the EK for ActivateCredential (USER role): with its
// (empty) auth value when userWithAuth is set; else with the TCG EK
// policy: PolicySecret(endorsement) in a session of the EK's name
// algorithm, then, for SHA-384 (high-range) EKs, PolicyOR(A, C).
func ekAuth(area *tpm2.TPMTPublic) (tpm2.Session, error) {
	if area.ObjectAttributes.UserWithAuth {
		return tpm2.PasswordAuth(nil), nil
	}
	return ekPolicy(area)
}

// ekPolicy is the TCG EK policy session for area's name algorithm.
func ekPolicy(area *tpm2.TPMTPublic) (tpm2.Session, error) {
	secret := func(t transport.TPM, handle tpm2.TPMISHPolicy, nonceTPM tpm2.TPM2BNonce) error {
		_, err := tpm2.PolicySecret{AuthHandle: tpm2.TPMRHEndorsement, PolicySession: handle, NonceTPM: nonceTPM}.Execute(t)
		return err
	}
	switch area.NameAlg {
	case tpm2.TPMAlgSHA256:
		return tpm2.Policy(tpm2.TPMAlgSHA256, 16, secret), nil
	case tpm2.TPMAlgSHA384:
		return tpm2.Policy(tpm2.TPMAlgSHA384, 16, func(t transport.TPM, handle tpm2.TPMISHPolicy, nonceTPM tpm2.TPM2BNonce) error {
			if err := secret(t, handle, nonceTPM); err != nil {
				return err
			}
			_, err := tpm2.PolicyOr{PolicySession: handle, PHashList: tpm2.TPMLDigest{Digests: []tpm2.TPM2BDigest{
				{Buffer: ekPolicyASHA384}, {Buffer: ekPolicyCSHA384}}}}.Execute(t)
			return err
		}), nil
	}
	return nil, fmt.Errorf("%w: EK name algorithm %v", ErrUnsupported, area.NameAlg)
}

// CheckActivation compares the attester's answer with the challenge's
// secret in constant time.
func CheckActivation(secret, answer []byte) error {
	if len(secret) == 0 || subtle.ConstantTimeCompare(secret, answer) != 1 {
		return fmt.Errorf("%w: wrong answer to the challenge", ErrActivation)
	}
	return nil
}
