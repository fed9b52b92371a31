package ca

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// nobody is a uid that is neither root nor the test's.
const nobody = 65534

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown files to another uid")
	}
}

// TestForeignOwnerRefused: a data dir, a directory above it, or a key or
// certificate file owned by another uid is refused, and so is a symlinked
// key, even when the planted content is a valid CA.
func TestForeignOwnerRefused(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string) string // returns the path the error must name
	}{
		{"data dir", func(t *testing.T, dir string) string {
			chown(t, dir)
			return dir
		}},
		{"parent of data dir", func(t *testing.T, dir string) string {
			chown(t, filepath.Dir(dir))
			return filepath.Dir(dir)
		}},
		{"root key", func(t *testing.T, dir string) string {
			chown(t, filepath.Join(dir, RootKeyFile))
			return filepath.Join(dir, RootKeyFile)
		}},
		{"root cert", func(t *testing.T, dir string) string {
			chown(t, filepath.Join(dir, RootCertFile))
			return filepath.Join(dir, RootCertFile)
		}},
		{"jwt key", func(t *testing.T, dir string) string {
			chown(t, filepath.Join(dir, JWTKeyFile))
			return filepath.Join(dir, JWTKeyFile)
		}},
		{"symlinked root key", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, RootKeyFile)
			elsewhere := filepath.Join(t.TempDir(), "key.pem")
			if err := os.Rename(p, elsewhere); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(elsewhere, p); err != nil {
				t.Fatal(err)
			}
			return p
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := dataDir(t)
			newCA(t, dir, nil)
			name := tt.setup(t, dir)
			_, err := LoadOrCreate(Config{TrustDomain: td, Dir: dir})
			if !errors.Is(err, ErrUnsafeFile) || !strings.Contains(err.Error(), name) {
				t.Fatalf("err = %v, want ErrUnsafeFile naming %s", err, name)
			}
		})
	}
}

func chown(t *testing.T, path string) {
	t.Helper()
	if err := os.Lchown(path, nobody, nobody); err != nil {
		t.Fatal(err)
	}
}

// TestMissingHalfRefused: with one half of a pair gone, no new key is made
// (that would silently invalidate what was issued); the error says what to
// do and the data dir is left as it was.
func TestMissingHalfRefused(t *testing.T) {
	for _, p := range []keyPair{rootPair, jwtPair} {
		t.Run(p.key, func(t *testing.T) {
			dir := dataDir(t)
			newCA(t, dir, nil)
			if err := os.Remove(filepath.Join(dir, p.key)); err != nil {
				t.Fatal(err)
			}
			_, err := LoadOrCreate(Config{TrustDomain: td, Dir: dir})
			if err == nil {
				t.Fatal("LoadOrCreate re-created a lost key")
			}
			for _, want := range []string{"restore " + p.key, "remove " + p.other} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			if _, err := os.Lstat(filepath.Join(dir, p.key)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s was re-created (%v)", p.key, err)
			}
			// Doing what the message says works.
			if err := os.Remove(filepath.Join(dir, p.other)); err != nil {
				t.Fatal(err)
			}
			newCA(t, dir, nil)
		})
	}
}

// TestCertRecreatedForKey: a root certificate missing beside its key (what
// older versions left after a crash between the two writes) is re-made for
// the same key, so SVIDs issued before still verify.
func TestCertRecreatedForKey(t *testing.T) {
	dir := dataDir(t)
	a := newCA(t, dir, nil)
	svid, err := a.MintX509SVID(webID, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, RootCertFile)); err != nil {
		t.Fatal(err)
	}
	log, logs := newLogger()
	b, err := LoadOrCreate(Config{TrustDomain: td, Dir: dir, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, b.Bundle()); err != nil {
		t.Errorf("SVID from before does not verify under the re-made root: %v", err)
	}
	if !strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("re-made root certificate not warned about: %s", logs)
	}
}

// TestJWTPublicKeyFile: a data dir from before jwt_pub.pem gets one, and
// from then on a lost jwt_key.pem is detected; a jwt_pub.pem of another key
// is refused.
func TestJWTPublicKeyFile(t *testing.T) {
	dir := dataDir(t)
	a := newCA(t, dir, nil)
	pub := filepath.Join(dir, JWTPublicKeyFile)
	if err := os.Remove(pub); err != nil {
		t.Fatal(err)
	}
	b := newCA(t, dir, nil)
	if a.JWTKeyID() != b.JWTKeyID() {
		t.Fatal("JWT key changed")
	}
	if _, err := os.Stat(pub); err != nil {
		t.Fatalf("%s not written for an existing key: %v", JWTPublicKeyFile, err)
	}
	// Replace jwt_pub.pem with the public key of another CA's JWT key.
	odir := dataDir(t)
	newCA(t, odir, nil)
	data, err := os.ReadFile(filepath.Join(odir, JWTPublicKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pub, data, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = LoadOrCreate(Config{TrustDomain: td, Dir: dir})
	if !errors.Is(err, ErrCorruptFile) || !strings.Contains(err.Error(), JWTPublicKeyFile) {
		t.Fatalf("err = %v, want ErrCorruptFile naming %s", err, JWTPublicKeyFile)
	}
}

// TestTempFilesCleaned: temporary files an interrupted write left (with
// private keys in them) are removed at start; files that only look alike,
// symlinks and files of other owners are left alone.
func TestTempFilesCleaned(t *testing.T) {
	dir := dataDir(t)
	newCA(t, dir, nil)
	ours := []string{".ca_key.pem.tmp-123456", ".jwt_key.pem.tmp-9", ".ca_key.pem.new.tmp-42", ".ca_cert.pem.tmp-7"}
	keep := []string{".ca_key.pem.tmp-12x", ".other.pem.tmp-1", "ca_key.pem.tmp-1", ".ca_key.pem.tmp-"}
	for _, n := range append(append([]string{}, ours...), keep...) {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("-----BEGIN PRIVATE KEY-----\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	link := ".jwt_key.pem.tmp-77"
	if err := os.Symlink(filepath.Join(dir, RootKeyFile), filepath.Join(dir, link)); err != nil {
		t.Fatal(err)
	}
	keep = append(keep, link)
	if os.Geteuid() == 0 {
		foreign := ".jwt_key.pem.tmp-55"
		if err := os.WriteFile(filepath.Join(dir, foreign), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		chown(t, filepath.Join(dir, foreign))
		keep = append(keep, foreign)
	}
	log, logs := newLogger()
	if _, err := LoadOrCreate(Config{TrustDomain: td, Dir: dir, Logger: log}); err != nil {
		t.Fatal(err)
	}
	for _, n := range ours {
		if _, err := os.Lstat(filepath.Join(dir, n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s not removed (%v)", n, err)
		}
		if !strings.Contains(logs.String(), n) {
			t.Errorf("removal of %s not logged", n)
		}
	}
	for _, n := range keep {
		if _, err := os.Lstat(filepath.Join(dir, n)); err != nil {
			t.Errorf("%s removed: %v", n, err)
		}
	}
}

// movePair creates a CA in a scratch dir and moves its root pair into dir
// under the given names, returning the root certificate's PEM.
func movePair(t *testing.T, dir, keyName, certName string) []byte {
	t.Helper()
	src := dataDir(t)
	newCA(t, src, nil)
	cert, err := os.ReadFile(filepath.Join(src, RootCertFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for from, to := range map[string]string{RootKeyFile: keyName, RootCertFile: certName} {
		if to == "" {
			continue
		}
		if err := os.Rename(filepath.Join(src, from), filepath.Join(dir, to)); err != nil {
			t.Fatal(err)
		}
	}
	return cert
}

// TestInterruptedPairWrite: every state a crash can leave writePair in
// loads as a whole pair: before the commit point the new key is dropped,
// after it the new pair is completed.
func TestInterruptedPairWrite(t *testing.T) {
	certPEM := func(t *testing.T, dir string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, RootCertFile))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	t.Run("new key only", func(t *testing.T) {
		dir := dataDir(t)
		movePair(t, dir, RootKeyFile+pendingSuffix, "")
		c := newCA(t, dir, nil)
		if _, err := os.Lstat(filepath.Join(dir, RootKeyFile+pendingSuffix)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("uncommitted key left: %v", err)
		}
		if !bytes.Contains(certPEM(t, dir), []byte("CERTIFICATE")) || c.X509Authorities()[0] == nil {
			t.Error("no fresh pair created")
		}
	})
	t.Run("old pair with new key only", func(t *testing.T) {
		dir := dataDir(t)
		old := newCA(t, dir, nil)
		before := certPEM(t, dir)
		movePair(t, dir, RootKeyFile+pendingSuffix, "")
		c := newCA(t, dir, nil)
		if !c.X509Authorities()[0].Equal(old.X509Authorities()[0]) || !bytes.Equal(certPEM(t, dir), before) {
			t.Error("old pair not kept")
		}
	})
	t.Run("both pending", func(t *testing.T) {
		dir := dataDir(t)
		newCA(t, dir, nil)
		want := movePair(t, dir, RootKeyFile+pendingSuffix, RootCertFile+pendingSuffix)
		newCA(t, dir, nil)
		if !bytes.Equal(certPEM(t, dir), want) {
			t.Error("committed pair not completed")
		}
	})
	t.Run("key renamed, cert pending", func(t *testing.T) {
		dir := dataDir(t)
		newCA(t, dir, nil)
		want := movePair(t, dir, RootKeyFile, RootCertFile+pendingSuffix)
		newCA(t, dir, nil) // the old cert does not match the new key: must roll forward
		if !bytes.Equal(certPEM(t, dir), want) {
			t.Error("committed pair not completed")
		}
	})
}

// TestWritePairFailure: when the second half cannot be written nothing of
// the new pair remains and the old pair is untouched.
func TestWritePairFailure(t *testing.T) {
	dir := dataDir(t)
	old := newCA(t, dir, nil)
	before, err := os.ReadFile(filepath.Join(dir, RootKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	// A directory where the certificate's pending file goes makes its
	// rename fail.
	blocker := filepath.Join(dir, RootCertFile+pendingSuffix, "x")
	if err := os.MkdirAll(blocker, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := writePair(dir, rootPair, []byte("new key"), []byte("new cert")); err == nil {
		t.Fatal("writePair succeeded")
	}
	if err := os.RemoveAll(filepath.Dir(blocker)); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 4 {
		t.Errorf("data dir holds %v, want the 4 files of before", ents)
	}
	after, err := os.ReadFile(filepath.Join(dir, RootKeyFile))
	if err != nil || !bytes.Equal(before, after) {
		t.Fatalf("old key changed (%v)", err)
	}
	c := newCA(t, dir, nil)
	if !c.X509Authorities()[0].Equal(old.X509Authorities()[0]) {
		t.Error("old pair does not load")
	}
}

// TestDataDirLocked: a second LoadOrCreate while one holds the data dir
// fails at once with a clear error instead of racing it.
func TestDataDirLocked(t *testing.T) {
	dir := dataDir(t)
	newCA(t, dir, nil)
	unlock, err := lockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = LoadOrCreate(Config{TrustDomain: td, Dir: dir})
	unlock()
	if err == nil || !strings.Contains(err.Error(), "another process") {
		t.Fatalf("err = %v, want a lock error", err)
	}
	newCA(t, dir, nil)
}
