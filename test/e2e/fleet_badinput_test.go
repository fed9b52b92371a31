package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodeward/nodeward/test/spire"
	"github.com/nodeward/nodeward/test/testutil"
)

// TestFleetBadInputIsAClearError runs the real binary in fleet mode with
// what goes wrong when joining a server: an unknown join token, a join
// token another node already used, a bootstrap bundle of another CA, and
// a config whose trust domain is not the server's. Each stops the agent
// with an error that says what is wrong (and never quotes the token); none
// starts serving, in standalone mode or otherwise.
func TestFleetBadInputIsAClearError(t *testing.T) {
	s := spire.Start(t, spire.Options{TrustDomain: "bad.test"})
	dir := testutil.SocketDir(t)
	goodBundle := filepath.Join(dir, "spire-bundle.pem")
	if err := os.WriteFile(goodBundle, s.BundlePEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	otherCA := spire.NewCA(t, dir, "not-the-server")
	used := s.TokenGenerate(s.ID("/node/first"))
	startFleetNodeWithToken(t, s, goodBundle, used)

	for _, tc := range []struct {
		name, td, bundle, token string
		want                    []string
	}{
		{"unknown token", "bad.test", goodBundle, "0b7a1c33-0000-4000-8000-000000000000", []string{"join_token", "InvalidArgument"}},
		{"used token", "bad.test", goodBundle, used, []string{"join_token", "InvalidArgument"}},
		{"bundle of another CA", "bad.test", otherCA.PEMPath, s.TokenGenerate(""), []string{"certificate"}},
		{"not the trust domain's server", "other.test", goodBundle, s.TokenGenerate(""), []string{"spiffe://other.test/spire/server"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := testutil.SocketDir(t)
			extra := fmt.Sprintf("server:\n  address: %s\n  trust_bundle: %s\n  node_attestation:\n    join_token: %s\n", s.Addr, tc.bundle, tc.token)
			cfg, sock := testutil.WriteConfig(t, d, tc.td, extra)
			out, errOut, code := testutil.Run(t, bin, nil, "agent", "--config", cfg)
			if code == 0 {
				t.Fatalf("the agent ran: %s %s", out, errOut)
			}
			t.Logf("%s", errOut)
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("error does not say %q:\n%s", w, errOut)
				}
			}
			if strings.Contains(errOut, tc.token) {
				t.Errorf("the error quotes the join token:\n%s", errOut)
			}
			if _, err := os.Stat(sock); err == nil {
				t.Error("the agent created its Workload API socket")
			}
		})
	}
}

// startFleetNodeWithToken starts a fleet node that attests with token.
func startFleetNodeWithToken(t *testing.T, s *spire.Server, bundle, token string) *testutil.Agent {
	t.Helper()
	dir := testutil.SocketDir(t)
	extra := fmt.Sprintf("server:\n  address: %s\n  trust_bundle: %s\n  node_attestation:\n    join_token: %s\n", s.Addr, bundle, token)
	cfg, sock := testutil.WriteConfig(t, dir, s.TrustDomain, extra)
	a := testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 30*time.Second)
	return a
}
