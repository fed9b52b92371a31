package tpm

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// TCG EK handles: persistent keys and the NV indexes of their certificates
// (TCG EK Credential Profile).
const (
	rsaEKHandle    = tpm2.TPMHandle(0x81010001)
	rsaEKCertNV    = tpm2.TPMHandle(0x01c00002)
	eccEKHandle    = tpm2.TPMHandle(0x81010002) // low range (P-256)
	eccEKCertNV    = tpm2.TPMHandle(0x01c0000a)
	eccHiEKHandle  = tpm2.TPMHandle(0x81010016) // high range P-384, as swtpm provisions it
	eccHiEKCertNV  = tpm2.TPMHandle(0x01c00016)
	noPersistentEK = tpm2.TPMHandle(0)
)

// EK is the endorsement key in use: the RSA EK when one is provisioned,
// else the ECC EK.
type EK struct {
	Public crypto.PublicKey
	// Area is the EK's TPMT_PUBLIC, marshalled (what MakeCredential needs).
	Area []byte
	// Cert is the EK certificate from NV, nil when the TPM has none.
	Cert *x509.Certificate
	// Type is "rsa" or "ecc".
	Type string
	// Persistent is false for an EK the TPM has no persistent copy of: it
	// was re-created from the endorsement seed with the TCG template that
	// its certificate was issued for.
	Persistent bool
	handle     tpm2.TPMHandle // loaded while an operation uses it
	name       tpm2.TPM2BName
	area       *tpm2.TPMTPublic
}

// release flushes a re-created (transient) EK.
func (ek *EK) release(t transport.TPM) {
	if !ek.Persistent && ek.handle != 0 {
		flush(t, ek.handle)
		ek.handle = 0
	}
}

// Hash is EKHash of the EK's public key.
func (ek *EK) Hash() string { h, _ := EKHash(ek.Public); return h }

// EKHash is the lowercase hex SHA-256 of the DER SubjectPublicKeyInfo of
// pub: the value of tpm:ek-hash selectors.
func EKHash(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("ek hash: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// EK reads the endorsement key and its certificate.
func (tp *TPM) EK(ctx context.Context) (*EK, error) {
	var ek *EK
	err := tp.do(ctx, func(t transport.TPM) error {
		var err error
		if ek, err = readEK(t); err == nil {
			ek.release(t)
		}
		return err
	})
	return ek, err
}

// ekSource is one place an EK may come from, in order of preference.
type ekSource struct {
	typ      string
	handle   tpm2.TPMHandle // persistent handle, or noPersistentEK
	nv       tpm2.TPMHandle // certificate index
	template *tpm2.TPMTPublic
}

// ekSources: the RSA EK when one is provisioned (persistent, or its
// certificate is in NV and the key can be re-created from the TCG
// template), else the ECC EK likewise. Many TPMs ship certificates in NV
// without persistent EKs.
var ekSources = []ekSource{
	{"rsa", rsaEKHandle, rsaEKCertNV, nil},
	{"rsa", noPersistentEK, rsaEKCertNV, &tpm2.RSAEKTemplate},
	{"ecc", eccEKHandle, eccEKCertNV, nil},
	{"ecc", eccHiEKHandle, eccHiEKCertNV, nil},
	{"ecc", noPersistentEK, eccEKCertNV, &tpm2.ECCEKTemplate},
}

// readEK finds the EK in use. A re-created EK stays loaded: the caller
// must call release.
func readEK(t transport.TPM) (*EK, error) {
	for _, src := range ekSources {
		ek, err := loadEK(t, src)
		if err != nil {
			return nil, err
		}
		if ek != nil {
			return ek, nil
		}
	}
	return nil, fmt.Errorf("%w: no persistent EK (0x81010001, 0x81010002, 0x81010016) and no EK certificate in NV to re-create one from; provision the TPM (tpm2_createek)", ErrNoEK)
}

// loadEK tries one source: nil, nil when it has no EK.
func loadEK(t transport.TPM, src ekSource) (*EK, error) {
	var (
		ek   = &EK{Type: src.typ}
		area *tpm2.TPMTPublic
		err  error
	)
	if src.template == nil {
		rp, err := tpm2.ReadPublic{ObjectHandle: src.handle}.Execute(t)
		if isTPMError(err) {
			return nil, nil // the TPM says: no such object
		}
		if err != nil {
			return nil, fmt.Errorf("read EK: %w", err)
		}
		if area, err = rp.OutPublic.Contents(); err != nil {
			return nil, fmt.Errorf("%w: EK public area: %v", ErrNoEK, err)
		}
		ek.Persistent, ek.handle, ek.name = true, src.handle, rp.Name
	}
	der, nverr := readNV(t, src.nv)
	if nverr != nil && !isTPMError(nverr) {
		return nil, fmt.Errorf("read EK certificate: %w", nverr)
	}
	if nverr == nil {
		if ek.Cert, err = x509.ParseCertificate(der); err != nil {
			return nil, fmt.Errorf("EK certificate in NV %#x: %w", uint32(src.nv), err)
		}
	}
	if src.template != nil {
		if ek.Cert == nil {
			return nil, nil // nothing says which EK this TPM's vendor certified
		}
		rsp, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(*src.template)}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("re-create the %s EK: %w", src.typ, err)
		}
		ek.handle, ek.name = rsp.ObjectHandle, rsp.Name
		if area, err = rsp.OutPublic.Contents(); err != nil {
			ek.release(t)
			return nil, fmt.Errorf("%w: EK public area: %v", ErrNoEK, err)
		}
	}
	if ek.Public, err = tpm2.Pub(*area); err != nil {
		ek.release(t)
		return nil, fmt.Errorf("%w: EK public key: %v", ErrNoEK, err)
	}
	if src.template != nil && !samePublic(ek.Public, ek.Cert.PublicKey) {
		// The certificate is for another template (a high-range EK, say):
		// the re-created key is not the certified one.
		ek.release(t)
		return nil, nil
	}
	ek.Area, ek.area = tpm2.Marshal(area), area
	return ek, nil
}

// isTPMError reports whether err is an error code from the TPM (as opposed
// to a transport failure or nil).
func isTPMError(err error) bool {
	var rc tpm2.TPMRC
	return errors.As(err, &rc)
}

// readNV reads a whole NV index.
func readNV(t transport.TPM, index tpm2.TPMHandle) ([]byte, error) {
	rp, err := tpm2.NVReadPublic{NVIndex: index}.Execute(t)
	if err != nil {
		return nil, err
	}
	pub, err := rp.NVPublic.Contents()
	if err != nil {
		return nil, err
	}
	const chunk = 512 // below every TPM's MAX_NV_BUFFER_SIZE
	var out []byte
	for off := 0; off < int(pub.DataSize); off += chunk {
		n := min(chunk, int(pub.DataSize)-off)
		r, err := tpm2.NVRead{
			AuthHandle: tpm2.AuthHandle{Handle: index, Name: rp.NVName, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: index, Name: rp.NVName},
			Size:       uint16(n),
			Offset:     uint16(off),
		}.Execute(t)
		if err != nil {
			return nil, err
		}
		out = append(out, r.Data.Buffer...)
	}
	return out, nil
}

// oidSAN is subjectAltName. EK certificates carry a critical SAN holding
// only a directoryName (TPM manufacturer, model, version), which Go's
// verifier does not handle.
var oidSAN = asn1.ObjectIdentifier{2, 5, 29, 17}

// VerifyEKCert verifies the EK certificate's chain (through intermediates)
// to roots and returns the lowercase hex SHA-256 of the DER of the
// certificate that issued the EK certificate: the value of tpm:ek-ca
// selectors. Errors wrap ErrEKChain.
func VerifyEKCert(cert *x509.Certificate, intermediates []*x509.Certificate, roots *x509.CertPool) (string, error) {
	if cert == nil {
		return "", fmt.Errorf("%w: the TPM has no EK certificate", ErrEKChain)
	}
	if roots == nil {
		return "", fmt.Errorf("%w: no roots", ErrEKChain)
	}
	c := *cert
	c.UnhandledCriticalExtensions = slices.DeleteFunc(slices.Clone(c.UnhandledCriticalExtensions), func(oid asn1.ObjectIdentifier) bool {
		return oid.Equal(oidSAN) && sanIsDirectoryNameOnly(cert)
	})
	pool := x509.NewCertPool()
	for _, ic := range intermediates {
		pool.AddCert(ic)
	}
	chains, err := c.Verify(x509.VerifyOptions{Roots: roots, Intermediates: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrEKChain, err)
	}
	issuer := chains[0][1]
	sum := sha256.Sum256(issuer.Raw)
	return hex.EncodeToString(sum[:]), nil
}

// sanIsDirectoryNameOnly reports whether the SAN extension holds only
// directoryName entries ([4]).
func sanIsDirectoryNameOnly(cert *x509.Certificate) bool {
	for _, ext := range cert.Extensions {
		if !ext.Id.Equal(oidSAN) {
			continue
		}
		var seq asn1.RawValue
		rest, err := asn1.Unmarshal(ext.Value, &seq)
		if err != nil || len(rest) != 0 || seq.Tag != asn1.TagSequence {
			return false
		}
		data := seq.Bytes
		if len(data) == 0 {
			return false
		}
		for len(data) > 0 {
			var v asn1.RawValue
			data, err = asn1.Unmarshal(data, &v)
			if err != nil || v.Class != asn1.ClassContextSpecific || v.Tag != 4 {
				return false
			}
		}
		return true
	}
	return false
}

// LoadRoots reads a PEM file of root (and optionally intermediate) CA
// certificates: self-signed ones become roots, the others intermediates.
func LoadRoots(path string) (*x509.CertPool, []*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("EK roots: %w", err)
	}
	roots := x509.NewCertPool()
	var inter []*x509.Certificate
	n := 0
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("EK roots %s: %w", path, err)
		}
		if c.CheckSignatureFrom(c) == nil {
			roots.AddCert(c)
			n++
		} else {
			inter = append(inter, c)
		}
	}
	if n == 0 {
		return nil, nil, fmt.Errorf("EK roots %s: %w", path, errors.New("no self-signed CA certificate"))
	}
	return roots, inter, nil
}
