package spire

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// NodeAttestor proves the node's identity to the server with one of the
// server's node attestor plugins.
type NodeAttestor interface {
	// Type is the server plugin's name ("join_token", "x509pop", …).
	Type() string
	// Payload is the first attestation message.
	Payload(ctx context.Context) ([]byte, error)
	// Answer answers one server challenge.
	Answer(ctx context.Context, challenge []byte) ([]byte, error)
	// Reattestable reports whether the node can attest again by itself
	// (the server then refuses RenewAgent: the node re-attests instead).
	Reattestable() bool
}

// JoinToken attests with a single-use SPIRE join token.
func JoinToken(token string) NodeAttestor { return joinToken(token) }

type joinToken string

func (joinToken) Type() string                              { return "join_token" }
func (j joinToken) Payload(context.Context) ([]byte, error) { return []byte(j), nil }
func (joinToken) Reattestable() bool                        { return false }
func (joinToken) Answer(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("join_token: unexpected challenge")
}

// String never shows the token (it is a secret).
func (joinToken) String() string { return "join_token(…)" }

// X509PoP attests with a node certificate chain (leaf first) and proves
// possession of its key (ECDSA or RSA), as SPIRE's x509pop plugin expects.
func X509PoP(chain []*x509.Certificate, key crypto.Signer) (NodeAttestor, error) {
	if len(chain) == 0 {
		return nil, errors.New("x509pop: empty certificate chain")
	}
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		pub, ok := chain[0].PublicKey.(*ecdsa.PublicKey)
		if !ok || !pub.Equal(&k.PublicKey) {
			return nil, errors.New("x509pop: the key does not match the certificate")
		}
	case *rsa.PrivateKey:
		pub, ok := chain[0].PublicKey.(*rsa.PublicKey)
		if !ok || !pub.Equal(&k.PublicKey) {
			return nil, errors.New("x509pop: the key does not match the certificate")
		}
	default:
		return nil, fmt.Errorf("x509pop: unsupported key type %T (want ECDSA or RSA)", key)
	}
	return &x509PoP{chain: chain, key: key}, nil
}

// LoadX509PoP reads the node certificate chain and key (PEM files).
func LoadX509PoP(certFile, keyFile string) (NodeAttestor, error) {
	chain, err := loadChain(certFile)
	if err != nil {
		return nil, fmt.Errorf("x509pop cert: %w", err)
	}
	st, err := os.Stat(keyFile)
	if err != nil {
		return nil, fmt.Errorf("x509pop key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("x509pop key %s: mode %#o: the private key must not be readable by group or others (chmod 600)", keyFile, st.Mode().Perm())
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("x509pop key: %w", err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("x509pop key %s: %w", keyFile, err)
	}
	return X509PoP(chain, key)
}

// loadChain reads a PEM certificate chain, leaf first.
func loadChain(file string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var chain []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("%s: no PEM certificate", file)
	}
	return chain, nil
}

func parseKey(data []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, errors.New("no PEM block")
	}
	if k, err := x509.ParsePKCS8PrivateKey(b.Bytes); err == nil {
		if s, ok := k.(crypto.Signer); ok {
			return s, nil
		}
		return nil, fmt.Errorf("unsupported key type %T", k)
	}
	if k, err := x509.ParseECPrivateKey(b.Bytes); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS1PrivateKey(b.Bytes); err == nil {
		return k, nil
	}
	return nil, errors.New("not a PKCS#8, SEC 1 or PKCS#1 private key")
}

type x509PoP struct {
	chain []*x509.Certificate
	key   crypto.Signer
}

func (*x509PoP) Type() string       { return "x509pop" }
func (*x509PoP) Reattestable() bool { return true }

func (p *x509PoP) Payload(context.Context) ([]byte, error) {
	certs := make([][]byte, len(p.chain))
	for i, c := range p.chain {
		certs[i] = c.Raw
	}
	return json.Marshal(struct {
		Certificates [][]byte `json:"certificates"`
	}{certs})
}

// The x509pop challenge and response (SPIRE's pkg/common/plugin/x509pop):
// the node signs SHA-256(challenge nonce ‖ own nonce).
type popChallenge struct {
	RSA   *struct{ Nonce []byte } `json:"rsa_signature"`
	ECDSA *struct{ Nonce []byte } `json:"ecdsa_signature"`
}

type popRSAResponse struct {
	Nonce     []byte `json:"nonce"`
	Signature []byte `json:"signature"`
}

type popECDSAResponse struct {
	Nonce []byte `json:"nonce"`
	R     []byte `json:"r"`
	S     []byte `json:"s"`
}

type popResponse struct {
	RSA   *popRSAResponse   `json:"rsa_signature"`
	ECDSA *popECDSAResponse `json:"ecdsa_signature"`
}

const popNonceLen = 32

func (p *x509PoP) Answer(_ context.Context, challenge []byte) ([]byte, error) {
	var ch popChallenge
	if err := json.Unmarshal(challenge, &ch); err != nil {
		return nil, fmt.Errorf("x509pop challenge: %w", err)
	}
	own := make([]byte, popNonceLen)
	if _, err := rand.Read(own); err != nil {
		return nil, err
	}
	digest := func(nonce []byte) ([]byte, error) {
		if len(nonce) != popNonceLen {
			return nil, errors.New("x509pop challenge: bad nonce length")
		}
		h := sha256.New()
		h.Write(nonce)
		h.Write(own)
		return h.Sum(nil), nil
	}
	var resp popResponse
	switch k := p.key.(type) {
	case *ecdsa.PrivateKey:
		if ch.ECDSA == nil {
			return nil, errors.New("x509pop: the server asked for a non-ECDSA signature of an ECDSA key")
		}
		d, err := digest(ch.ECDSA.Nonce)
		if err != nil {
			return nil, err
		}
		r, s, err := ecdsa.Sign(rand.Reader, k, d)
		if err != nil {
			return nil, err
		}
		resp.ECDSA = &popECDSAResponse{Nonce: own, R: r.Bytes(), S: s.Bytes()}
	case *rsa.PrivateKey:
		if ch.RSA == nil {
			return nil, errors.New("x509pop: the server asked for a non-RSA signature of an RSA key")
		}
		d, err := digest(ch.RSA.Nonce)
		if err != nil {
			return nil, err
		}
		sig, err := rsa.SignPSS(rand.Reader, k, crypto.SHA256, d, nil)
		if err != nil {
			return nil, err
		}
		resp.RSA = &popRSAResponse{Nonce: own, Signature: sig}
	}
	return json.Marshal(resp)
}
