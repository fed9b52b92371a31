package spire_test

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nodeward/nodeward/agent/spire"
	spiretest "github.com/nodeward/nodeward/test/spire"
	"github.com/nodeward/nodeward/test/swtpm"
)

func TestMain(m *testing.M) {
	code := m.Run()
	swtpm.Cleanup()
	os.Exit(code)
}

// TestTPMDevIDNode attests to a real spire-server with its tpm_devid
// attestor from a real swtpm: an RSA and an ECC DevID key made in the
// TPM, certificates from the server's DevID CA, the swtpm's RSA EK
// certified by its local CA (the "manufacturer"). The node re-attests by
// itself, a node alias on its DevID subject gives it workload entries, and
// a DevID certificate from a CA the server does not trust is refused.
func TestTPMDevIDNode(t *testing.T) {
	sim, tp := swtpm.Start(t)
	dir := t.TempDir()
	devidCA := spiretest.NewCA(t, dir, "devid-ca")
	s := spiretest.Start(t, spiretest.Options{TrustDomain: "devid.test", TPMDevIDCA: devidCA.PEMPath, TPMEndorsementCA: sim.RootsPEM})
	alias := s.ID("/node/devid-rsa")
	s.EntryCreate(spiretest.Entry{Node: true, SPIFFEID: alias, Selectors: []string{"tpm_devid:subject:cn:devid-rsa"}})
	s.EntryCreate(spiretest.Entry{ParentID: alias, SPIFFEID: s.ID("/workload/on-devid"), Selectors: []string{"unix:uid:1000"}})

	for _, typ := range []string{"rsa", "ecc"} {
		key, err := tp.CreateDevIDKey(ctxT(t), typ)
		if err != nil {
			t.Fatal(err)
		}
		att, err := spire.TPMDevID(tp, devidCA.DevIDCert(t, "devid-"+typ, key.Public()), key)
		if err != nil {
			t.Fatal(err)
		}
		if !att.Reattestable() {
			t.Fatal("tpm_devid must re-attest by itself")
		}
		c := newClient(t, s, t.TempDir(), att)
		start := time.Now()
		if err := c.Start(ctxT(t)); err != nil {
			t.Fatalf("tpm_devid attest (%s): %v\n%s", typ, err, s.Log())
		}
		t.Logf("%s DevID: attested in %v", typ, time.Since(start).Round(time.Millisecond))
		id, _ := c.AgentSVID()
		if !strings.HasPrefix(id.String(), s.ID("/spire/agent/tpm_devid/")) {
			t.Fatalf("agent id %s", id)
		}
		if typ == "rsa" {
			// The server maps the node to its alias on its next entry
			// cache reload.
			deadline := time.Now().Add(30 * time.Second)
			for found := false; !found; {
				entries, err := c.SyncEntries(ctxT(t))
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range entries {
					found = found || e.SPIFFEID.String() == s.ID("/workload/on-devid")
				}
				if !found && time.Now().After(deadline) {
					t.Fatalf("the node alias on tpm_devid:subject:cn did not give the node its workload entry: %+v", entries)
				}
				if !found {
					time.Sleep(100 * time.Millisecond) // poll the server
				}
			}
		}
		first, _ := c.GetX509SVID()
		if err := c.Rotate(ctxT(t)); err != nil {
			t.Fatalf("re-attest: %v", err)
		}
		second, _ := c.GetX509SVID()
		if first.Certificates[0].SerialNumber.Cmp(second.Certificates[0].SerialNumber) == 0 {
			t.Fatal("re-attestation kept the old SVID")
		}
	}

	// A DevID certificate from a CA the server does not trust.
	key, err := tp.CreateDevIDKey(ctxT(t), "ecc")
	if err != nil {
		t.Fatal(err)
	}
	rogue := spiretest.NewCA(t, dir, "rogue-ca")
	att, err := spire.TPMDevID(tp, rogue.DevIDCert(t, "devid-rsa", key.Public()), key)
	if err != nil {
		t.Fatal(err)
	}
	stateDir := t.TempDir()
	err = newClient(t, s, stateDir, att).Start(ctxT(t))
	if err == nil || !strings.Contains(err.Error(), "DevID") {
		t.Fatalf("a DevID certificate from an untrusted CA: %v, want the server's refusal", err)
	}
	t.Logf("untrusted DevID CA: %v", err)
	if names, _ := os.ReadDir(stateDir); len(names) != 0 {
		t.Fatalf("a refused attestation left state behind: %v", names)
	}

	// The DevID certificate must be for the DevID key.
	other, err := tp.CreateDevIDKey(ctxT(t), "ecc")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := spire.TPMDevID(tp, devidCA.DevIDCert(t, "x", other.Public()), key); err == nil {
		t.Fatal("a DevID certificate for another key was accepted")
	}
}
