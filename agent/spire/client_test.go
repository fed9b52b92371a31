package spire_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/nodeward/nodeward/agent/fleet"
	"github.com/nodeward/nodeward/agent/spire"
	spiretest "github.com/nodeward/nodeward/test/spire"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func bundleCerts(t *testing.T, s *spiretest.Server) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for rest := s.BundlePEM(); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

func newClient(t *testing.T, s *spiretest.Server, dir string, att spire.NodeAttestor) *spire.Client {
	t.Helper()
	c, err := spire.New(spire.Config{ServerAddr: s.Addr, TrustDomain: spiffeid.RequireTrustDomainFromString(s.TrustDomain),
		BootstrapBundle: bundleCerts(t, s), Dir: dir, Attestor: att})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func csrFor(t *testing.T) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse("spiffe://ignored/x")
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return key, csr
}

func pollEntries(t *testing.T, c *spire.Client, ok func([]fleet.Entry) bool) []fleet.Entry {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		es, err := c.SyncEntries(ctxT(t))
		if err == nil && ok(es) {
			return es
		}
		if time.Now().After(deadline) {
			t.Fatalf("entries never as wanted: %v %v", es, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Join token: attest, persist 0600, restart from the persisted SVID with
// a spent token, renew, and the whole node API: only the node's entries,
// an X.509-SVID that names the entry and chains to the bundle, a refused
// foreign entry, a JWT-SVID that validates against the bundle's keys.
func TestJoinTokenNode(t *testing.T) {
	s := spiretest.Start(t, spiretest.Options{TrustDomain: "jt.test"})
	nodeID := s.ID("/node/a")
	tok := s.TokenGenerate(nodeID)
	dir := t.TempDir()
	c := newClient(t, s, dir, spire.JoinToken(tok))
	if err := c.Start(ctxT(t)); err != nil {
		t.Fatalf("attest: %v\n%s", err, s.Log())
	}
	id, exp := c.AgentSVID()
	if id.String() != s.ID("/spire/agent/join_token/"+tok) || !exp.After(time.Now()) {
		t.Fatalf("agent SVID %s until %s", id, exp)
	}
	st, err := os.Stat(filepath.Join(dir, spire.StateFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v %v", st, err)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, spire.StateFile))
	if strings.Contains(string(raw), tok) {
		t.Fatal("the join token was persisted")
	}

	// A restart uses the persisted SVID: the spent token is not used.
	c2 := newClient(t, s, dir, spire.JoinToken("spent-token"))
	if err := c2.Start(ctxT(t)); err != nil {
		t.Fatalf("restart from the persisted SVID: %v", err)
	}
	if id2, _ := c2.AgentSVID(); id2 != id {
		t.Fatalf("restarted as %s, want %s", id2, id)
	}

	mine := s.EntryCreate(spiretest.Entry{ParentID: nodeID, SPIFFEID: s.ID("/web"), Selectors: []string{"unix:uid:1000"}, Hint: "web"})
	other := s.EntryCreate(spiretest.Entry{ParentID: s.ID("/node/other"), SPIFFEID: s.ID("/db"), Selectors: []string{"unix:uid:1001"}})
	es := pollEntries(t, c2, func(es []fleet.Entry) bool {
		for _, e := range es {
			if e.ID == mine {
				return true
			}
		}
		return false
	})
	for _, e := range es {
		if e.ID == other {
			t.Fatal("the server sent another node's entry")
		}
	}
	var web *fleet.Entry
	for i := range es {
		if es[i].ID == mine {
			web = &es[i]
		}
	}
	if web == nil || web.SPIFFEID.String() != s.ID("/web") || web.Hint != "web" || len(web.Selectors) != 1 || web.Selectors[0] != "unix:uid:1000" {
		t.Fatalf("entries %+v", es)
	}

	// Renew: the new SVID works for every later call.
	if err := c2.Rotate(ctxT(t)); err != nil {
		t.Fatalf("renew: %v", err)
	}
	if _, exp2 := c2.AgentSVID(); exp2.Before(exp) {
		t.Fatalf("renewed SVID expires %s, before the old one %s", exp2, exp)
	}

	key, csr := csrFor(t)
	chain, err := c2.NewX509SVID(ctxT(t), mine, csr)
	if err != nil {
		t.Fatalf("sign after renewal: %v", err)
	}
	b, err := c2.Bundle(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	var roots []*x509.Certificate
	for _, a := range b.X509 {
		roots = append(roots, a.Cert)
	}
	sv := &x509svid.SVID{ID: spiffeid.RequireFromString(s.ID("/web")), Certificates: chain, PrivateKey: key}
	if got, _, err := x509svid.Verify(sv.Certificates, x509BundleOf(t, s.TrustDomain, roots)); err != nil || got.String() != s.ID("/web") {
		t.Fatalf("SVID %v does not verify against the bundle: %v", got, err)
	}
	if _, err := c2.NewX509SVID(ctxT(t), other, csr); err == nil || !strings.Contains(err.Error(), "NotFound") {
		t.Fatalf("another node's entry signed: %v", err)
	}

	tokJWT, jexp, err := c2.NewJWTSVID(ctxT(t), mine, []string{"aud-1"})
	if err != nil || !jexp.After(time.Now()) {
		t.Fatalf("JWT-SVID: %v %s", err, jexp)
	}
	jb := jwtbundle.New(spiffeid.RequireTrustDomainFromString(s.TrustDomain))
	for _, k := range b.JWT {
		if err := jb.AddJWTAuthority(k.KeyID, k.PublicKey); err != nil {
			t.Fatal(err)
		}
	}
	if j, err := jwtsvid.ParseAndValidate(tokJWT, jb, []string{"aud-1"}); err != nil || j.ID.String() != s.ID("/web") {
		t.Fatalf("JWT-SVID does not validate: %v", err)
	}
}

// x509pop with ECDSA and RSA node keys: attest, re-attest (a new SVID),
// and after eviction the next call re-attests by itself.
func TestX509PoPNode(t *testing.T) {
	dir := t.TempDir()
	ca := spiretest.NewCA(t, dir, "node-ca")
	s := spiretest.Start(t, spiretest.Options{TrustDomain: "pop.test", X509PoPCABundle: ca.PEMPath})
	for _, kt := range []spiretest.KeyType{spiretest.ECDSAP256, spiretest.RSA2048} {
		chain, key := ca.NodeCert(t, "node-"+map[spiretest.KeyType]string{spiretest.ECDSAP256: "ec", spiretest.RSA2048: "rsa"}[kt], kt)
		att, err := spire.X509PoP(chain, key)
		if err != nil {
			t.Fatal(err)
		}
		c := newClient(t, s, t.TempDir(), att)
		if err := c.Start(ctxT(t)); err != nil {
			t.Fatalf("x509pop attest (%v): %v\n%s", kt, err, s.Log())
		}
		id, _ := c.AgentSVID()
		if !strings.HasPrefix(id.String(), s.ID("/spire/agent/x509pop/")) {
			t.Fatalf("agent id %s", id)
		}
		first, _ := c.GetX509SVID()
		if err := c.Rotate(ctxT(t)); err != nil {
			t.Fatalf("re-attest: %v", err)
		}
		second, _ := c.GetX509SVID()
		if first.Certificates[0].SerialNumber.Cmp(second.Certificates[0].SerialNumber) == 0 {
			t.Fatal("re-attestation kept the old SVID")
		}
		s.AgentEvict(id.String())
		if _, err := c.SyncEntries(ctxT(t)); err != nil {
			t.Fatalf("after eviction the node did not re-attest: %v", err)
		}
	}
}

// A banned node is told so and stops; a stopped server is a clear error.
func TestBannedNodeAndServerDown(t *testing.T) {
	s := spiretest.Start(t, spiretest.Options{TrustDomain: "ban.test"})
	tok := s.TokenGenerate(s.ID("/node/b"))
	c := newClient(t, s, t.TempDir(), spire.JoinToken(tok))
	if err := c.Start(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	id, _ := c.AgentSVID()
	s.AgentBan(id.String())
	_, err := c.SyncEntries(ctxT(t))
	if !errors.Is(err, spire.ErrAgentBanned) {
		t.Fatalf("banned node: %v", err)
	}
	// The ban sticks: no later call reaches the server.
	if _, err := c.Bundle(ctxT(t)); !errors.Is(err, spire.ErrAgentBanned) {
		t.Fatalf("a banned client called on: %v", err)
	}

	s2 := spiretest.Start(t, spiretest.Options{TrustDomain: "down.test"})
	c2 := newClient(t, s2, t.TempDir(), spire.JoinToken(s2.TokenGenerate(s2.ID("/node/d"))))
	if err := c2.Start(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	s2.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c2.SyncEntries(ctx); err == nil {
		t.Fatal("sync with a stopped server succeeded")
	}
}

// A planted or loosened state file is never used: the node attests again.
func TestUnsafeStateFileRefused(t *testing.T) {
	s := spiretest.Start(t, spiretest.Options{TrustDomain: "state.test"})
	dir := t.TempDir()
	c := newClient(t, s, dir, spire.JoinToken(s.TokenGenerate(s.ID("/node/s"))))
	if err := c.Start(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	first, _ := c.AgentSVID()
	state := filepath.Join(dir, spire.StateFile)
	// Readable by others: refused, and the node attests with a new token.
	if err := os.Chmod(state, 0o644); err != nil {
		t.Fatal(err)
	}
	c2 := newClient(t, s, dir, spire.JoinToken(s.TokenGenerate(s.ID("/node/s2"))))
	if err := c2.Start(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if id, _ := c2.AgentSVID(); id == first {
		t.Fatal("a state file readable by others was used")
	}
	// A symlink in its place: refused likewise.
	moved := filepath.Join(t.TempDir(), "elsewhere.json")
	if err := os.Rename(state, moved); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(moved, state); err != nil {
		t.Fatal(err)
	}
	c3 := newClient(t, s, dir, spire.JoinToken("spent"))
	if err := c3.Start(ctxT(t)); err == nil {
		t.Fatal("a symlinked state file was used (the spent token cannot attest)")
	}
}

func x509BundleOf(t *testing.T, td string, roots []*x509.Certificate) *x509bundle.Bundle {
	t.Helper()
	return x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString(td), roots)
}

// The bootstrap bundle authenticates the server: a bundle of another CA,
// or the right bundle for another trust domain, fails attestation (and
// spends no token); insecure bootstrap checks only the server's SPIFFE ID.
func TestBootstrap(t *testing.T) {
	s := spiretest.Start(t, spiretest.Options{TrustDomain: "boot.test"})
	tok := s.TokenGenerate("")
	other := spiretest.NewCA(t, t.TempDir(), "other")
	for _, tc := range []struct {
		name string
		td   string
		pool []*x509.Certificate
	}{
		{"wrong bundle", "boot.test", []*x509.Certificate{other.Cert}},
		{"wrong trust domain", "elsewhere.test", bundleCerts(t, s)},
	} {
		c, err := spire.New(spire.Config{ServerAddr: s.Addr, TrustDomain: spiffeid.RequireTrustDomainFromString(tc.td),
			BootstrapBundle: tc.pool, Dir: t.TempDir(), Attestor: spire.JoinToken(tok)})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Start(ctxT(t)); err == nil {
			t.Fatalf("%s: attested", tc.name)
		}
	}
	c, err := spire.New(spire.Config{ServerAddr: s.Addr, TrustDomain: spiffeid.RequireTrustDomainFromString("boot.test"),
		InsecureBootstrap: true, Dir: t.TempDir(), Attestor: spire.JoinToken(tok)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Start(ctxT(t)); err != nil {
		t.Fatalf("insecure bootstrap (the token must still be unused): %v", err)
	}
	if _, err := c.SyncEntries(ctxT(t)); err != nil {
		t.Fatalf("calls after insecure bootstrap: %v", err)
	}
}

// Above one page (500 entries) the server sends revisions first and the
// client asks for the entries by id; a deleted entry is dropped.
func TestSyncPaged(t *testing.T) {
	s := spiretest.Start(t, spiretest.Options{TrustDomain: "paged.test"})
	tok := s.TokenGenerate("")
	agentID := s.ID("/spire/agent/join_token/" + tok)
	const n = 620
	var want []spiretest.Entry
	for i := range n {
		want = append(want, spiretest.Entry{ParentID: agentID, SPIFFEID: s.ID(fmt.Sprintf("/w/%04d", i)), Selectors: []string{fmt.Sprintf("unix:uid:%d", 2000+i)}})
	}
	s.EntryCreateMany(want)
	c := newClient(t, s, t.TempDir(), spire.JoinToken(tok))
	defer c.Close()
	if err := c.Start(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	es := pollEntries(t, c, func(es []fleet.Entry) bool { return len(es) == n })
	s.EntryDelete(es[0].ID)
	pollEntries(t, c, func(es2 []fleet.Entry) bool {
		for _, e := range es2 {
			if e.ID == es[0].ID {
				return false
			}
		}
		return len(es2) == n-1
	})
}

// Run renews a join-token node's agent SVID at about half its life, before
// it expires, and the node keeps working with the renewed one.
func TestRunRenewsBeforeExpiry(t *testing.T) {
	s := spiretest.Start(t, spiretest.Options{TrustDomain: "run.test", AgentTTL: 20 * time.Second})
	c := newClient(t, s, t.TempDir(), spire.JoinToken(s.TokenGenerate("")))
	defer c.Close()
	if err := c.Start(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	_, firstExp := c.AgentSVID()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, exp := c.AgentSVID(); exp.After(firstExp) {
			if !time.Now().Before(firstExp) {
				t.Fatalf("renewed at %s, after the old SVID expired at %s", time.Now(), firstExp)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent SVID (expiring %s) was not renewed", firstExp)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := c.SyncEntries(ctxT(t)); err != nil {
		t.Fatalf("calls with the renewed SVID: %v", err)
	}
}
