package spire_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/nodeward/nodeward/agent/spire"
)

// FakeMalformedServer is a fake SPIRE server: it answers node attestation
// with a broken result. A real spire-server never does, which is why this
// one is a fake; it authenticates as spiffe://mal.test/spire/server like a
// real one, so the client gets as far as reading the answer.
type FakeMalformedServer struct {
	agentv1.UnimplementedAgentServer
	answer func(csrKey crypto.PublicKey) *agentv1.AttestAgentResponse
}

func (f *FakeMalformedServer) AttestAgent(stream agentv1.Agent_AttestAgentServer) error {
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	csr, err := x509.ParseCertificateRequest(req.GetParams().GetParams().GetCsr())
	if err != nil {
		return err
	}
	if err := stream.Send(f.answer(csr.PublicKey)); err != nil {
		return err
	}
	_, _ = stream.Recv() // the client answers or hangs up
	return nil
}

func testCert(t *testing.T, tmpl *x509.Certificate, pub crypto.PublicKey, parent *x509.Certificate, key crypto.Signer) *x509.Certificate {
	t.Helper()
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestMalformedServerAnswersAreClearErrors: a broken attestation result
// (garbage certificates, an SVID for another key, for another trust
// domain, an expired one, an empty answer, a challenge to a join token) is
// refused with an error that names the problem, and nothing is persisted.
func TestMalformedServerAnswersAreClearErrors(t *testing.T) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := testCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "fake ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}, caKey.Public(), nil, caKey)
	serverKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serverURI, _ := url.Parse("spiffe://mal.test/spire/server")
	serverCert := testCert(t, &x509.Certificate{URIs: []*url.URL{serverURI}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)},
		serverKey.Public(), ca, caKey)
	leaf := func(pub crypto.PublicKey, id string, notAfter time.Time) []byte {
		u, _ := url.Parse(id)
		return testCert(t, &x509.Certificate{URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature,
			NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: notAfter}, pub, ca, caKey).Raw
	}
	result := func(chain ...[]byte) *agentv1.AttestAgentResponse {
		return &agentv1.AttestAgentResponse{Step: &agentv1.AttestAgentResponse_Result_{Result: &agentv1.AttestAgentResponse_Result{
			Svid: &types.X509SVID{CertChain: chain}}}}
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for _, tc := range []struct {
		name   string
		answer func(pub crypto.PublicKey) *agentv1.AttestAgentResponse
		want   string
	}{
		{"garbage certificate", func(crypto.PublicKey) *agentv1.AttestAgentResponse { return result([]byte{0x30, 0x03, 1, 2, 3}) }, "certificate 0"},
		{"empty chain", func(crypto.PublicKey) *agentv1.AttestAgentResponse { return result() }, "empty certificate chain"},
		{"another key", func(crypto.PublicKey) *agentv1.AttestAgentResponse {
			return result(leaf(other.Public(), "spiffe://mal.test/spire/agent/x", time.Now().Add(time.Hour)))
		}, "does not certify the key"},
		{"another trust domain", func(pub crypto.PublicKey) *agentv1.AttestAgentResponse {
			return result(leaf(pub, "spiffe://evil.test/spire/agent/x", time.Now().Add(time.Hour)))
		}, "not an ID in mal.test"},
		{"expired", func(pub crypto.PublicKey) *agentv1.AttestAgentResponse {
			return result(leaf(pub, "spiffe://mal.test/spire/agent/x", time.Now().Add(-time.Minute)))
		}, "expired"},
		{"neither challenge nor result", func(crypto.PublicKey) *agentv1.AttestAgentResponse { return &agentv1.AttestAgentResponse{} }, "neither a challenge nor a result"},
		{"a challenge to a join token", func(crypto.PublicKey) *agentv1.AttestAgentResponse {
			return &agentv1.AttestAgentResponse{Step: &agentv1.AttestAgentResponse_Challenge{Challenge: []byte("?")}}
		}, "unexpected challenge"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
				Certificates: []tls.Certificate{{Certificate: [][]byte{serverCert.Raw}, PrivateKey: serverKey}}, MinVersion: tls.VersionTLS12})))
			agentv1.RegisterAgentServer(srv, &FakeMalformedServer{answer: tc.answer})
			go func() { _ = srv.Serve(l) }()
			defer srv.Stop()
			dir := t.TempDir()
			c, err := spire.New(spire.Config{ServerAddr: l.Addr().String(), TrustDomain: spiffeid.RequireTrustDomainFromString("mal.test"),
				BootstrapBundle: []*x509.Certificate{ca}, Dir: dir, Attestor: spire.JoinToken("tok")})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			err = c.Start(ctxT(t))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Start: %v, want an error saying %q", err, tc.want)
			}
			if names, _ := os.ReadDir(dir); len(names) != 0 {
				t.Fatalf("a refused answer left state behind: %v", names)
			}
		})
	}
}
