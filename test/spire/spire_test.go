package spire

import (
	"encoding/pem"
	"strings"
	"testing"
)

// TestBuild builds (or finds) the cached spire-server; `make spire-server`
// runs it so that `make test` does not pay the build.
func TestBuild(t *testing.T) {
	if bin := Binary(t); bin == "" {
		t.Fatal("no binary")
	}
}

// TestSmoke: a real server starts, makes a join token, registers entries,
// serves its bundle and deletes an entry.
func TestSmoke(t *testing.T) {
	s := Start(t, Options{TrustDomain: "smoke.test"})
	tok := s.TokenGenerate(s.ID("/node/a"))
	if len(tok) < 16 {
		t.Fatalf("token %q too short", tok)
	}
	id := s.EntryCreate(Entry{ParentID: s.ID("/node/a"), SPIFFEID: s.ID("/web"), Selectors: []string{"unix:uid:1000"}, X509SVIDTTL: 600, DNSNames: []string{"web.internal"}})
	alias := s.EntryCreate(Entry{Node: true, SPIFFEID: s.ID("/nodes/cn-x"), Selectors: []string{"x509pop:subject:cn:x"}})
	if id == "" || alias == "" || id == alias {
		t.Fatalf("entry ids %q %q", id, alias)
	}
	out := s.CLI("entry", "show", "-entryID", id)
	if !strings.Contains(out, s.ID("/web")) || !strings.Contains(out, "uid:1000") {
		t.Fatalf("entry show: %s", out)
	}
	s.EntryDelete(id)
	if out, err := s.run(defaultCLITimeout, "entry", "show", "-entryID", id); err == nil && strings.Contains(string(out), s.ID("/web")) {
		t.Fatalf("entry still there after delete: %s", out)
	}
	b, _ := pem.Decode(s.BundlePEM())
	if b == nil || b.Type != "CERTIFICATE" {
		t.Fatal("bundle is not a PEM certificate")
	}
}
