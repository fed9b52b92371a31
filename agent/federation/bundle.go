package federation

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// parseBundle parses a SPIFFE bundle document of td and checks it (see
// checkBundle).
func parseBundle(td spiffeid.TrustDomain, data []byte) (*spiffebundle.Bundle, error) {
	if len(data) > MaxBundleSize {
		return nil, fmt.Errorf("bundle of %s larger than %d bytes: %w", td, MaxBundleSize, ErrBadBundle)
	}
	b, err := spiffebundle.Parse(td, data)
	if err != nil {
		return nil, fmt.Errorf("bundle of %s: %w: %w", td, ErrBadBundle, err)
	}
	if err := checkBundle(td, b); err != nil {
		return nil, err
	}
	return b, nil
}

// checkBundle refuses a bundle without an X.509 authority or with an
// authority whose SPIFFE ID (URI SAN) names another trust domain: SPIFFE
// signing certificates carry the trust domain's ID, so such a bundle was
// served for, or copied from, another trust domain.
func checkBundle(td spiffeid.TrustDomain, b *spiffebundle.Bundle) error {
	auths := b.X509Authorities()
	if len(auths) == 0 {
		return fmt.Errorf("bundle of %s has no X.509 authority: %w", td, ErrBadBundle)
	}
	for _, c := range auths {
		for _, u := range c.URIs {
			if u.Scheme != "spiffe" {
				continue
			}
			id, err := spiffeid.FromURI(u)
			if err != nil || id.TrustDomain() != td {
				return fmt.Errorf("bundle of %s holds an authority of %s: %w", td, u.Host, ErrBadBundle)
			}
		}
	}
	return nil
}

// parseBootstrap parses a bootstrap bundle: SPIFFE bundle JSON, or PEM
// certificates (what `spire-server bundle show` prints).
func parseBootstrap(td spiffeid.TrustDomain, data []byte) (*spiffebundle.Bundle, error) {
	trimmed := bytes.TrimSpace(data)
	if bytes.HasPrefix(trimmed, []byte("{")) {
		return parseBundle(td, trimmed)
	}
	var certs []*x509.Certificate
	rest := trimmed
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("bootstrap bundle of %s: %w: %w", td, ErrBadBundle, err)
		}
		certs = append(certs, c)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("bootstrap bundle of %s: neither SPIFFE bundle JSON nor PEM certificates: %w", td, ErrBadBundle)
	}
	b := spiffebundle.FromX509Authorities(td, certs)
	if err := checkBundle(td, b); err != nil {
		return nil, err
	}
	return b, nil
}

// readConfigFile reads at most MaxBundleSize bytes of a regular file the
// operator named in the config (bootstrap bundle, web PKI roots). Like the
// config itself, it may be a symlink (Kubernetes ConfigMaps are) and its
// owner is the operator's business, but a file every user may write is
// refused, and a FIFO does not block.
func readConfigFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }() // read-only
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if fi.Mode().Perm()&0o002 != 0 {
		return nil, fmt.Errorf("%s (mode %v) is writable by every user", path, fi.Mode().Perm())
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxBundleSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxBundleSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, MaxBundleSize)
	}
	return data, nil
}
