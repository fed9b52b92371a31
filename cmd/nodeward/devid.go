package main

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/nodeward/nodeward/attestors/tpm"
	"github.com/nodeward/nodeward/internal/atomicfile"
)

// DevID file names `node devid` writes into --out: what the config's
// server.node_attestation.tpm_devid {pub, priv, cert} then name.
const (
	devIDPubFile  = "devid.pub"
	devIDPrivFile = "devid.priv"
	devIDCSRFile  = "devid.csr"
)

// nodeDevID is `nodeward node devid`: it provisions a local device
// identity (LDevID) key in the TPM for SPIRE's tpm_devid node attestation
// and writes the key's public area, its private blob (sealed to this TPM)
// and a certificate signing request for the DevID CA to sign.
func nodeDevID(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fl := newFlagSet("node devid", stderr)
	typ := fl.String("type", "ecc", "key type: ecc (P-256) or rsa (2048)")
	cn := fl.String("cn", "", "the CSR's subject common name, e.g. the host name (required)")
	out := fl.String("out", "", "directory for devid.pub, devid.priv (0600) and devid.csr (required)")
	tf := addTPMFlags(fl)
	if err := parseFlags(fl, args); err != nil {
		return err
	}
	if *cn == "" || *out == "" || fl.NArg() != 0 {
		return fmt.Errorf("%w: node devid --cn NAME --out DIR [--type ecc|rsa] [--tpm ADDR]", errUsage)
	}
	if *typ != "ecc" && *typ != "rsa" {
		return fmt.Errorf("%w: --type: want ecc or rsa, not %q", errUsage, *typ)
	}
	// Never replace a DevID key: its certificate and the server's view of
	// this node name that key.
	for _, name := range []string{devIDPubFile, devIDPrivFile, devIDCSRFile} {
		if _, err := os.Lstat(filepath.Join(*out, name)); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%w: %s already exists: a DevID key is provisioned once (remove the files to make a new one)", errUsage, filepath.Join(*out, name))
		}
	}
	addr, _, err := tf.resolve()
	if err != nil {
		return err
	}
	tp, err := tpm.Open(ctx, addr)
	if err != nil {
		return err
	}
	defer tp.Close()
	k, err := tp.CreateDevIDKey(ctx, *typ)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: *cn}}, tp.DevIDSigner(k))
	if err != nil {
		return fmt.Errorf("DevID CSR: %w", err)
	}
	if err := os.MkdirAll(*out, 0o700); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{devIDPrivFile, k.PrivateBlob(), 0o600},
		{devIDPubFile, k.PublicArea(), 0o644},
		{devIDCSRFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}), 0o644},
	} {
		if err := atomicfile.Write(filepath.Join(*out, f.name), f.data, f.perm); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "DevID key (%s) created in the TPM: %s, %s\nHave the DevID CA sign %s, then set server.node_attestation.tpm_devid {cert, pub, priv}.\n",
		*typ, filepath.Join(*out, devIDPubFile), filepath.Join(*out, devIDPrivFile), filepath.Join(*out, devIDCSRFile))
	return nil
}
