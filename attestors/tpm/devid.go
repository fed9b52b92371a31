package tpm

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// DevIDKey is a local device identity (LDevID, IEEE 802.1AR) signing key
// held in the TPM: outside the chip it exists only as its public area and
// its private part sealed to the TPM's storage root key, which only this
// TPM can load. It is what SPIRE's tpm_devid node attestor proves.
//
// The parent is the TCG high-range storage root key (H-1 for RSA, H-2 for
// ECC keys: the go-tpm-tools SRK template with an empty unique field), the
// parent spire-agent uses, so the same key files work with either agent.
type DevIDKey struct {
	area    *tpm2.TPMTPublic
	public  []byte // TPMT_PUBLIC, marshalled
	private []byte // TPM2B_PRIVATE contents
	pub     crypto.PublicKey
	scheme  tpm2.TPMTSigScheme // to pass to TPM2_Sign; null when the key fixes it
}

// ParseDevIDKey parses a DevID key: pub is its TPMT_PUBLIC, priv the
// contents of its TPM2B_PRIVATE. Both are accepted with or without the
// 2-byte size prefix of the TPM2B (go-tpm's legacy CreateKey writes them
// without, tpm2-tools' `tpm2_create -u -r` with). The key must be an
// unrestricted RSA or ECC signing key that signs with SHA-256 (or leaves
// the scheme open): SPIRE's server verifies SHA-256 signatures only.
func ParseDevIDKey(pub, priv []byte) (*DevIDKey, error) {
	pub, priv = stripTPM2BSize(pub), stripTPM2BSize(priv)
	if len(priv) == 0 {
		return nil, fmt.Errorf("%w: DevID private blob is empty", ErrEvidence)
	}
	area, err := tpm2.Unmarshal[tpm2.TPMTPublic](pub)
	if err != nil {
		return nil, fmt.Errorf("%w: DevID public area: %v", ErrEvidence, err)
	}
	if !area.ObjectAttributes.SignEncrypt || area.ObjectAttributes.Restricted || area.ObjectAttributes.Decrypt {
		return nil, fmt.Errorf("%w: the DevID key is not an unrestricted signing key", ErrUnsupported)
	}
	if !area.ObjectAttributes.FixedTPM {
		return nil, fmt.Errorf("%w: the DevID key is not fixedTPM (it could exist outside this TPM)", ErrUnsupported)
	}
	k := &DevIDKey{area: area, public: slices.Clone(pub), private: slices.Clone(priv)}
	if k.pub, err = tpm2.Pub(*area); err != nil {
		return nil, fmt.Errorf("%w: DevID public key: %v", ErrEvidence, err)
	}
	switch area.Type {
	case tpm2.TPMAlgRSA:
		p, err := area.Parameters.RSADetail()
		if err != nil {
			return nil, fmt.Errorf("%w: DevID RSA parameters: %v", ErrEvidence, err)
		}
		switch p.Scheme.Scheme {
		case tpm2.TPMAlgNull:
			k.scheme = rsassaScheme
		case tpm2.TPMAlgRSASSA:
			d, err := p.Scheme.Details.RSASSA()
			if err != nil || d.HashAlg != tpm2.TPMAlgSHA256 {
				return nil, fmt.Errorf("%w: the DevID key's RSASSA scheme does not use SHA-256 (SPIRE verifies SHA-256 only)", ErrUnsupported)
			}
			k.scheme = tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull}
		default:
			return nil, fmt.Errorf("%w: the DevID key's RSA scheme %v is not RSASSA (SPIRE verifies PKCS #1 v1.5 signatures)", ErrUnsupported, p.Scheme.Scheme)
		}
	case tpm2.TPMAlgECC:
		p, err := area.Parameters.ECCDetail()
		if err != nil {
			return nil, fmt.Errorf("%w: DevID ECC parameters: %v", ErrEvidence, err)
		}
		switch p.Scheme.Scheme {
		case tpm2.TPMAlgNull:
			k.scheme = ecdsaScheme
		case tpm2.TPMAlgECDSA:
			d, err := p.Scheme.Details.ECDSA()
			if err != nil || d.HashAlg != tpm2.TPMAlgSHA256 {
				return nil, fmt.Errorf("%w: the DevID key's ECDSA scheme does not use SHA-256 (SPIRE verifies SHA-256 only)", ErrUnsupported)
			}
			k.scheme = tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull}
		default:
			return nil, fmt.Errorf("%w: the DevID key's ECC scheme %v is not ECDSA", ErrUnsupported, p.Scheme.Scheme)
		}
	default:
		return nil, fmt.Errorf("%w: DevID key type %v (want RSA or ECC)", ErrUnsupported, area.Type)
	}
	return k, nil
}

// LoadDevIDKeyFiles reads a DevID key's public and private blob files (see
// ParseDevIDKey). The private blob is sealed to the TPM, yet a copy lets
// anyone with the same TPM use the key: it must not be readable by group
// or others.
func LoadDevIDKeyFiles(pubPath, privPath string) (*DevIDKey, error) {
	pub, err := os.ReadFile(pubPath)
	if err != nil {
		return nil, fmt.Errorf("DevID public blob: %w", err)
	}
	st, err := os.Stat(privPath)
	if err != nil {
		return nil, fmt.Errorf("DevID private blob: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("DevID private blob %s: mode %#o: must not be readable by group or others (chmod 600)", privPath, st.Mode().Perm())
	}
	priv, err := os.ReadFile(privPath)
	if err != nil {
		return nil, fmt.Errorf("DevID private blob: %w", err)
	}
	k, err := ParseDevIDKey(pub, priv)
	if err != nil {
		return nil, fmt.Errorf("DevID key %s: %w", pubPath, err)
	}
	return k, nil
}

// stripTPM2BSize drops a leading TPM2B size when it matches the rest. A
// TPMT_PUBLIC starts with its type (0x0001, 0x0023) and a TPM2B_PRIVATE's
// contents with a digest size (0x0020…): neither equals len-2 for a real
// blob, so the test cannot misfire.
func stripTPM2BSize(b []byte) []byte {
	if len(b) > 2 && int(binary.BigEndian.Uint16(b)) == len(b)-2 {
		return b[2:]
	}
	return b
}

// Public is the DevID key's public key (what its certificate must hold).
func (k *DevIDKey) Public() crypto.PublicKey { return k.pub }

// PublicArea is the key's TPMT_PUBLIC, marshalled.
func (k *DevIDKey) PublicArea() []byte { return slices.Clone(k.public) }

// PrivateBlob is the key's TPM2B_PRIVATE contents (sealed to the TPM).
func (k *DevIDKey) PrivateBlob() []byte { return slices.Clone(k.private) }

// rsassaScheme is the RSASSA-PKCS1-v1_5/SHA-256 signature scheme.
var rsassaScheme = tpm2.TPMTSigScheme{
	Scheme:  tpm2.TPMAlgRSASSA,
	Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgRSASSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256}),
}

// srkTemplate is the TCG high-range SRK for a child of type typ: the TCG
// reference template with an empty unique field (H-1, H-2).
func srkTemplate(typ tpm2.TPMAlgID) tpm2.TPMTPublic {
	if typ == tpm2.TPMAlgECC {
		t := tpm2.ECCSRKTemplate
		t.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{})
		return t
	}
	t := tpm2.RSASRKTemplate
	t.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{})
	return t
}

// rsaAKTemplate is the RSA attestation key SPIRE's tpm_devid verifier
// accepts (it checks RSA AK signatures only): a restricted RSASSA/SHA-256
// signing key, a primary of the endorsement hierarchy so it is the same
// key every time it is made.
var rsaAKTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgRSA,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true,
		NoDA: true, Restricted: true, SignEncrypt: true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
		Scheme: tpm2.TPMTRSAScheme{
			Scheme:  tpm2.TPMAlgRSASSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSASSA, &tpm2.TPMSSigSchemeRSASSA{HashAlg: tpm2.TPMAlgSHA256}),
		},
		KeyBits: 2048,
	}),
	Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)}),
}

// devIDTemplate is a new DevID key of type typ ("rsa": RSA-2048 RSASSA,
// "ecc": P-256 ECDSA, both SHA-256), as SPIRE's documentation provisions it.
func devIDTemplate(typ string) (tpm2.TPMTPublic, error) {
	attrs := tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true, SignEncrypt: true}
	switch typ {
	case "rsa":
		return tpm2.TPMTPublic{
			Type: tpm2.TPMAlgRSA, NameAlg: tpm2.TPMAlgSHA256, ObjectAttributes: attrs,
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
				Scheme: tpm2.TPMTRSAScheme{
					Scheme:  tpm2.TPMAlgRSASSA,
					Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSASSA, &tpm2.TPMSSigSchemeRSASSA{HashAlg: tpm2.TPMAlgSHA256}),
				},
				KeyBits: 2048,
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{}),
		}, nil
	case "ecc":
		t := eccSigningTemplate(false)
		t.ObjectAttributes = attrs
		return t, nil
	}
	return tpm2.TPMTPublic{}, fmt.Errorf("%w: DevID key type %q (want rsa or ecc)", ErrUnsupported, typ)
}

// CreateDevIDKey creates a new DevID key of type typ ("rsa" or "ecc")
// under the storage root key. It is the provisioning step (done once, by
// the operator or a manufacturer); the key's certificate then comes from
// the DevID CA the SPIRE server trusts.
func (tp *TPM) CreateDevIDKey(ctx context.Context, typ string) (*DevIDKey, error) {
	tmpl, err := devIDTemplate(typ)
	if err != nil {
		return nil, err
	}
	var k *DevIDKey
	err = tp.do(ctx, func(t transport.TPM) error {
		srk, err := createSRK(t, tmpl.Type)
		if err != nil {
			return err
		}
		defer flush(t, srk.handle)
		rsp, err := tpm2.Create{ParentHandle: srk.auth(), InPublic: tpm2.New2B(tmpl)}.Execute(t)
		if err != nil {
			return fmt.Errorf("create DevID key: %w", err)
		}
		k, err = ParseDevIDKey(rsp.OutPublic.Bytes(), rsp.OutPrivate.Buffer)
		return err
	})
	return k, err
}

// createSRK creates the high-range SRK for children of type typ.
func createSRK(t transport.TPM, typ tpm2.TPMAlgID) (*loadedKey, error) {
	rsp, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(srkTemplate(typ))}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("create SRK: %w", err)
	}
	return &loadedKey{handle: rsp.ObjectHandle, name: rsp.Name}, nil
}

// loadDevID loads k under the SRK; the caller flushes it.
func loadDevID(t transport.TPM, k *DevIDKey) (*loadedKey, error) {
	srk, err := createSRK(t, k.area.Type)
	if err != nil {
		return nil, err
	}
	defer flush(t, srk.handle)
	rsp, err := tpm2.Load{
		ParentHandle: srk.auth(),
		InPrivate:    tpm2.TPM2BPrivate{Buffer: k.private},
		InPublic:     tpm2.BytesAs2B[tpm2.TPMTPublic](k.public),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("%w: load the DevID key (was it created in this TPM, under its SRK?): %v", ErrUnsupported, err)
	}
	return &loadedKey{handle: rsp.ObjectHandle, name: rsp.Name, public: k.area, area: k.public}, nil
}

// createRSAAK creates the RSA attestation key; the caller flushes it.
func createRSAAK(t transport.TPM) (*loadedKey, error) {
	rsp, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(rsaAKTemplate)}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("create RSA AK: %w", err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		flush(t, rsp.ObjectHandle)
		return nil, fmt.Errorf("AK public area: %w", err)
	}
	return &loadedKey{handle: rsp.ObjectHandle, name: rsp.Name, public: pub, area: tpm2.Marshal(pub)}, nil
}

// readRSAEK finds the RSA EK with its certificate (SPIRE's tpm_devid
// verifier takes RSA EKs only); the caller releases it.
func readRSAEK(t transport.TPM) (*EK, error) {
	for _, src := range ekSources {
		if src.typ != "rsa" {
			continue
		}
		ek, err := loadEK(t, src)
		if err != nil {
			return nil, err
		}
		if ek == nil {
			continue
		}
		if ek.Cert == nil {
			ek.release(t)
			continue
		}
		return ek, nil
	}
	return nil, fmt.Errorf("%w: tpm_devid needs an RSA EK with its certificate in NV %#x (SPIRE's tpm_devid verifier supports RSA EKs only)", ErrNoEK, uint32(rsaEKCertNV))
}

// DevIDEvidence is what SPIRE's tpm_devid attestor needs to believe a
// DevID key lives in a genuine TPM: the EK (certified by the
// manufacturer), an AK of the same TPM, and the AK's TPM2_Certify of the
// DevID key. All TPM structures are marshalled without TPM2B size prefixes.
type DevIDEvidence struct {
	DevIDPub               []byte // TPMT_PUBLIC of the DevID key
	EKPub                  []byte // TPMT_PUBLIC of the EK
	EKCert                 []byte // DER
	AKPub                  []byte // TPMT_PUBLIC of the AK
	CertifiedDevID         []byte // TPMS_ATTEST
	CertificationSignature []byte // TPMT_SIGNATURE
}

// CertifyDevID has the TPM's RSA AK certify k (TPM2_Certify) and collects
// the evidence around it.
func (tp *TPM) CertifyDevID(ctx context.Context, k *DevIDKey) (*DevIDEvidence, error) {
	var ev *DevIDEvidence
	err := tp.do(ctx, func(t transport.TPM) error {
		ek, err := readRSAEK(t)
		if err != nil {
			return err
		}
		ek.release(t)
		devid, err := loadDevID(t, k)
		if err != nil {
			return err
		}
		defer flush(t, devid.handle)
		ak, err := createRSAAK(t)
		if err != nil {
			return err
		}
		defer flush(t, ak.handle)
		rsp, err := tpm2.Certify{
			ObjectHandle: devid.auth(),
			SignHandle:   ak.auth(),
			InScheme:     tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		}.Execute(t)
		if err != nil {
			return fmt.Errorf("certify the DevID key: %w", err)
		}
		ev = &DevIDEvidence{
			DevIDPub: slices.Clone(k.public), EKPub: slices.Clone(ek.Area), EKCert: slices.Clone(ek.Cert.Raw),
			AKPub: slices.Clone(ak.area), CertifiedDevID: slices.Clone(rsp.CertifyInfo.Bytes()),
			CertificationSignature: tpm2.Marshal(rsp.Signature),
		}
		return nil
	})
	return ev, err
}

// SignDevID signs data with k: SHA-256, then PKCS #1 v1.5 for an RSA key
// or ASN.1 DER ECDSA for an ECC key (what x509.Certificate.CheckSignature
// verifies with SHA256WithRSA / ECDSAWithSHA256).
func (tp *TPM) SignDevID(ctx context.Context, k *DevIDKey, data []byte) ([]byte, error) {
	digest := sha256.Sum256(data)
	return tp.signDevIDDigest(ctx, k, digest[:])
}

// DevIDSigner is k as a crypto.Signer over SHA-256 digests (PKCS #1 v1.5
// for RSA, ASN.1 ECDSA): for a certificate signing request of the DevID
// key. Each Sign uses DefaultTimeout.
func (tp *TPM) DevIDSigner(k *DevIDKey) crypto.Signer { return devIDSigner{tp, k} }

type devIDSigner struct {
	tp *TPM
	k  *DevIDKey
}

func (s devIDSigner) Public() crypto.PublicKey { return s.k.pub }

func (s devIDSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts.HashFunc() != crypto.SHA256 || len(digest) != sha256.Size {
		return nil, fmt.Errorf("%w: the DevID key signs SHA-256 digests only", ErrUnsupported)
	}
	if _, pss := opts.(*rsa.PSSOptions); pss {
		return nil, fmt.Errorf("%w: the DevID key signs PKCS #1 v1.5, not PSS", ErrUnsupported)
	}
	return s.tp.signDevIDDigest(context.Background(), s.k, digest)
}

func (tp *TPM) signDevIDDigest(ctx context.Context, k *DevIDKey, digest []byte) ([]byte, error) {
	var sig []byte
	err := tp.do(ctx, func(t transport.TPM) error {
		devid, err := loadDevID(t, k)
		if err != nil {
			return err
		}
		defer flush(t, devid.handle)
		rsp, err := tpm2.Sign{
			KeyHandle:  devid.auth(),
			Digest:     tpm2.TPM2BDigest{Buffer: digest},
			InScheme:   k.scheme,
			Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
		}.Execute(t)
		if err != nil {
			return fmt.Errorf("sign with the DevID key: %w", err)
		}
		switch k.area.Type {
		case tpm2.TPMAlgRSA:
			s, err := rsp.Signature.Signature.RSASSA()
			if err != nil {
				return fmt.Errorf("DevID signature: %w", err)
			}
			sig = slices.Clone(s.Sig.Buffer)
		default:
			if sig, err = ecdsaSignature(&rsp.Signature); err != nil {
				return fmt.Errorf("DevID signature: %w", err)
			}
		}
		return nil
	})
	return sig, err
}

// ActivateCredentialRSAAK answers a credential-activation challenge made
// for the RSA EK and the RSA AK of CertifyDevID.
func (tp *TPM) ActivateCredentialRSAAK(ctx context.Context, ch *Challenge) ([]byte, error) {
	return tp.activateWith(ctx, ch, readRSAEK, createRSAAK, false)
}

// VerifyDevIDEvidence checks ev in software as SPIRE's tpm_devid verifier
// does, short of the certificate chains: the AK (RSA) signed the
// certification, and the certified object is the DevID key. It returns a
// credential-activation challenge for the EK and AK and its secret.
func VerifyDevIDEvidence(ev *DevIDEvidence) (*Challenge, []byte, error) {
	ak, err := tpm2.Unmarshal[tpm2.TPMTPublic](ev.AKPub)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: AK public area: %v", ErrEvidence, err)
	}
	akPub, err := tpm2.Pub(*ak)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: AK public key: %v", ErrEvidence, err)
	}
	rsaAK, ok := akPub.(*rsa.PublicKey)
	if !ok {
		return nil, nil, fmt.Errorf("%w: the AK is not RSA", ErrEvidence)
	}
	sig, err := tpm2.Unmarshal[tpm2.TPMTSignature](ev.CertificationSignature)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: certification signature: %v", ErrEvidence, err)
	}
	s, err := sig.Signature.RSASSA()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: certification signature: %v", ErrEvidence, err)
	}
	digest := sha256.Sum256(ev.CertifiedDevID)
	if err := rsa.VerifyPKCS1v15(rsaAK, crypto.SHA256, digest[:], s.Sig.Buffer); err != nil {
		return nil, nil, fmt.Errorf("%w: certification signature: %v", ErrEvidence, err)
	}
	att, err := tpm2.Unmarshal[tpm2.TPMSAttest](ev.CertifiedDevID)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: certification: %v", ErrEvidence, err)
	}
	if att.Magic != tpm2.TPMGeneratedValue || att.Type != tpm2.TPMSTAttestCertify {
		return nil, nil, fmt.Errorf("%w: not a TPM-generated certification", ErrEvidence)
	}
	info, err := att.Attested.Certify()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: certification: %v", ErrEvidence, err)
	}
	devid, err := tpm2.Unmarshal[tpm2.TPMTPublic](ev.DevIDPub)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: DevID public area: %v", ErrEvidence, err)
	}
	name, err := tpm2.ObjectName(devid)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: DevID name: %v", ErrEvidence, err)
	}
	if !slices.Equal(name.Buffer, info.Name.Buffer) {
		return nil, nil, fmt.Errorf("%w: the certified object is not the DevID key", ErrEvidence)
	}
	ek, err := tpm2.Unmarshal[tpm2.TPMTPublic](ev.EKPub)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: EK public area: %v", ErrEvidence, err)
	}
	return challengeFor(ek, ak)
}

// VerifyDevIDSignature checks a SignDevID signature against the key's
// public key, as SPIRE's verifier does through the DevID certificate.
func VerifyDevIDSignature(pub crypto.PublicKey, data, sig []byte) error {
	digest := sha256.Sum256(data)
	switch p := pub.(type) {
	case *rsa.PublicKey:
		return rsa.VerifyPKCS1v15(p, crypto.SHA256, digest[:], sig)
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(p, digest[:], sig) {
			return errors.New("ecdsa: invalid signature")
		}
		return nil
	}
	return fmt.Errorf("%w: key type %T", ErrUnsupported, pub)
}
