package federation

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var serial atomic.Int64

// testCA is a trust domain's signing authority made in the test (an X.509
// root with the trust domain's SPIFFE ID, and a JWT key), standing in for
// agent/ca, which the agent wires in.
type testCA struct {
	td   spiffeid.TrustDomain
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newTestCA(t *testing.T, td spiffeid.TrustDomain) *testCA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial.Add(1)),
		Subject:               pkix.Name{CommonName: "test root " + td.Name()},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{td: td, cert: cert, key: key}
}

// svid mints an X509-SVID for id.
func (c *testCA) svid(t *testing.T, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)),
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{id.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, key.Public(), c.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

// bundleOf makes a bundle of cas' roots (in cas' trust domain) with a JWT
// key and sequence seq.
func bundleOf(t *testing.T, seq uint64, cas ...*testCA) *spiffebundle.Bundle {
	t.Helper()
	b := spiffebundle.New(cas[0].td)
	for _, c := range cas {
		b.AddX509Authority(c.cert)
	}
	if err := b.AddJWTAuthority("k"+big.NewInt(int64(seq)).String(), newKey(t).Public()); err != nil {
		t.Fatal(err)
	}
	b.SetSequenceNumber(seq)
	return b
}

// side is one trust domain's bundle endpoint, with a bundle and an
// endpoint SVID the test can swap (as a rotating CA would).
type side struct {
	td     spiffeid.TrustDomain
	ca     *testCA
	bundle atomic.Pointer[spiffebundle.Bundle]
	svid   atomic.Pointer[x509svid.SVID]
	ep     *Endpoint
	url    string
}

func endpointID(td spiffeid.TrustDomain) spiffeid.ID { return EndpointID(td) }

// startSide runs a bundle endpoint of td on loopback until the test ends.
func startSide(t *testing.T, td spiffeid.TrustDomain, cfg EndpointConfig) *side {
	t.Helper()
	s := &side{td: td, ca: newTestCA(t, td)}
	s.bundle.Store(bundleOf(t, 1, s.ca))
	s.svid.Store(s.ca.svid(t, endpointID(td)))
	cfg.Listen = "127.0.0.1:0"
	cfg.Bundle = s.bundle.Load
	if cfg.Profile == ProfileHTTPSSPIFFE {
		cfg.SVID = func() (*x509svid.SVID, error) { return s.svid.Load(), nil }
	}
	ep, err := NewEndpoint(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.ep = ep
	s.url = "https://" + ep.Addr().String() + "/"
	run(t, ep.Run)
	return s
}

// run runs fn until the test ends, then waits for it.
func run(t *testing.T, fn func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := fn(ctx); err != nil {
			t.Errorf("run: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// writeFile writes data to a new file in dir.
func writeFile(t *testing.T, dir, name string, data []byte, perm os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, perm); err != nil {
		t.Fatal(err)
	}
	return p
}

func marshal(t *testing.T, b *spiffebundle.Bundle) []byte {
	t.Helper()
	data, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func certPEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

func keyPEM(t *testing.T, k crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// webPKI is a test web PKI: a root and a server certificate for 127.0.0.1.
type webPKI struct {
	root     *x509.Certificate
	rootKey  *ecdsa.PrivateKey
	rootFile string
}

func newWebPKI(t *testing.T, dir string) *webPKI {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: "test web root"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	w := &webPKI{root: root, rootKey: key}
	w.rootFile = writeFile(t, dir, "web-root.pem", certPEM(root), 0o644)
	return w
}

// serverFiles writes a certificate for 127.0.0.1 and its key (0600) into
// dir and returns their paths and the certificate.
func (w *webPKI) serverFiles(t *testing.T, dir string) (certFile, keyFile string, cert *x509.Certificate) {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, w.root, key.Public(), w.rootKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err = x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	certFile = writeFile(t, dir, "tmp-cert.pem", certPEM(cert), 0o644)
	keyFile = writeFile(t, dir, "tmp-key.pem", keyPEM(t, key), 0o600)
	// Renamed into place, as a certificate renewal tool does.
	if err := os.Rename(certFile, filepath.Join(dir, "endpoint.crt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(keyFile, filepath.Join(dir, "endpoint.key")); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "endpoint.crt"), filepath.Join(dir, "endpoint.key"), cert
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// statusOf returns the fetcher's status of td.
func statusOf(f *Fetcher, td spiffeid.TrustDomain) Status {
	for _, s := range f.Status() {
		if s.TrustDomain == td {
			return s
		}
	}
	return Status{}
}

// startCancelable runs fn and returns a function that stops it and waits.
func startCancelable(t *testing.T, fn func(context.Context) error) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := fn(ctx); err != nil {
			t.Errorf("run: %v", err)
		}
	})
	stop := func() { cancel(); wg.Wait() }
	t.Cleanup(stop)
	return stop
}

// webClient trusts only root.
func webClient(root *x509.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(root)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, DisableKeepAlives: true}}
}
