package federation

import (
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/nodeward/nodeward/internal/safefs"
)

// fileStamp identifies the versions of files by size and mtime.
func fileStamp(paths ...string) (string, error) {
	s := ""
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		var ino uint64
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			ino = st.Ino
		}
		s += fmt.Sprintf("%d:%d:%d;", fi.Size(), fi.ModTime().UnixNano(), ino)
	}
	return s, nil
}

// loadKeyPair loads the https_web certificate chain and key. The key file
// is opened without following a symlink and must be owned by root or the
// agent's user and not open to group or others, as every key file of the
// agent (internal/safefs).
func loadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, err := readConfigFile(certFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate: %w", err)
	}
	if err := safefs.CheckParents(keyFile); err != nil {
		return tls.Certificate{}, fmt.Errorf("key: %w", err)
	}
	f, err := safefs.OpenFile(keyFile, true)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("key: %w", err)
	}
	defer func() { _ = f.Close() }() // read-only
	keyPEM, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("key %s: %w", keyFile, err)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// X509KeyPair's errors do not quote the key.
		return tls.Certificate{}, fmt.Errorf("key pair %s, %s: %w", certFile, keyFile, err)
	}
	return c, nil
}
