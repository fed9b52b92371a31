package tpm

import (
	"github.com/google/go-tpm/tpm2"
)

// eccSigningTemplate is an ECC P-256 ECDSA/SHA-256 signing key that never
// leaves the TPM (fixedTPM, fixedParent, sensitiveDataOrigin).
func eccSigningTemplate(restricted bool) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			NoDA:                true,
			Restricted:          restricted,
			SignEncrypt:         true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	}
}

// akTemplate is the attestation key: a restricted signing key, so it signs
// only TPM-generated structures (quotes), never an outside digest that
// could be made to look like one.
var akTemplate = eccSigningTemplate(true)

// ecdsaScheme is the ECDSA/SHA-256 signature scheme.
var ecdsaScheme = tpm2.TPMTSigScheme{
	Scheme:  tpm2.TPMAlgECDSA,
	Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256}),
}

// loadedKey is a transient object; the caller flushes it.
type loadedKey struct {
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	public *tpm2.TPMTPublic
	area   []byte // marshalled TPMT_PUBLIC
}

func (k *loadedKey) auth() tpm2.AuthHandle {
	return tpm2.AuthHandle{Handle: k.handle, Name: k.name, Auth: tpm2.PasswordAuth(nil)}
}
