package spire

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"

	"github.com/nodeward/nodeward/attestors/tpm"
)

// TPMDevID attests with a TPM-held local device identity, as SPIRE's
// tpm_devid plugin expects: the DevID certificate chain (leaf first, issued
// by the server's DevID CA), proof from the TPM's RSA EK (certified by the
// manufacturer) and an RSA AK that the DevID key lives in that TPM
// (TPM2_Certify), then the answers to the server's two challenges: a nonce
// signed by the DevID key, and a credential only that TPM can activate.
func TPMDevID(t *tpm.TPM, chain []*x509.Certificate, key *tpm.DevIDKey) (NodeAttestor, error) {
	if t == nil {
		return nil, errors.New("tpm_devid: no TPM")
	}
	if len(chain) == 0 {
		return nil, errors.New("tpm_devid: empty certificate chain")
	}
	if !reflect.DeepEqual(chain[0].PublicKey, key.Public()) {
		return nil, errors.New("tpm_devid: the DevID certificate is not for the DevID key")
	}
	return &tpmDevID{tpm: t, chain: chain, key: key}, nil
}

// LoadTPMDevID reads the DevID certificate chain (PEM) and the key's
// public and private blobs (see tpm.ParseDevIDKey).
func LoadTPMDevID(t *tpm.TPM, certFile, pubFile, privFile string) (NodeAttestor, error) {
	chain, err := loadChain(certFile)
	if err != nil {
		return nil, fmt.Errorf("tpm_devid cert: %w", err)
	}
	key, err := tpm.LoadDevIDKeyFiles(pubFile, privFile)
	if err != nil {
		return nil, fmt.Errorf("tpm_devid: %w", err)
	}
	return TPMDevID(t, chain, key)
}

type tpmDevID struct {
	tpm   *tpm.TPM
	chain []*x509.Certificate
	key   *tpm.DevIDKey
}

func (*tpmDevID) Type() string       { return "tpm_devid" }
func (*tpmDevID) Reattestable() bool { return true }

// devIDPayload is SPIRE's tpmdevid.AttestationRequest (Go field names,
// []byte as base64).
type devIDPayload struct {
	DevIDCert              [][]byte
	DevIDPub               []byte
	EKCert                 []byte
	EKPub                  []byte
	AKPub                  []byte
	CertifiedDevID         []byte
	CertificationSignature []byte
}

// devIDChallenge is SPIRE's tpmdevid.ChallengeRequest.
type devIDChallenge struct {
	DevID          []byte
	CredActivation *struct {
		Credential []byte
		Secret     []byte
	}
}

// devIDResponse is SPIRE's tpmdevid.ChallengeResponse.
type devIDResponse struct {
	DevID          []byte
	CredActivation []byte
}

func (d *tpmDevID) Payload(ctx context.Context) ([]byte, error) {
	ev, err := d.tpm.CertifyDevID(ctx, d.key)
	if err != nil {
		return nil, fmt.Errorf("tpm_devid: %w", err)
	}
	certs := make([][]byte, len(d.chain))
	for i, c := range d.chain {
		certs[i] = c.Raw
	}
	return json.Marshal(devIDPayload{DevIDCert: certs, DevIDPub: ev.DevIDPub, EKCert: ev.EKCert, EKPub: ev.EKPub,
		AKPub: ev.AKPub, CertifiedDevID: ev.CertifiedDevID, CertificationSignature: ev.CertificationSignature})
}

// maxDevIDNonce bounds the nonce the server asks the DevID key to sign.
const maxDevIDNonce = 1024

func (d *tpmDevID) Answer(ctx context.Context, challenge []byte) ([]byte, error) {
	var ch devIDChallenge
	if err := json.Unmarshal(challenge, &ch); err != nil {
		return nil, fmt.Errorf("tpm_devid challenge: %w", err)
	}
	if len(ch.DevID) == 0 || len(ch.DevID) > maxDevIDNonce || ch.CredActivation == nil {
		return nil, errors.New("tpm_devid challenge: want a DevID nonce and a credential activation")
	}
	sig, err := d.tpm.SignDevID(ctx, d.key, ch.DevID)
	if err != nil {
		return nil, fmt.Errorf("tpm_devid: %w", err)
	}
	secret, err := d.tpm.ActivateCredentialRSAAK(ctx, &tpm.Challenge{CredentialBlob: ch.CredActivation.Credential, Secret: ch.CredActivation.Secret})
	if err != nil {
		return nil, fmt.Errorf("tpm_devid: %w", err)
	}
	return json.Marshal(devIDResponse{DevID: sig, CredActivation: secret})
}
