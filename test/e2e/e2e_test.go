// Package e2e tests the built nodeward binary end to end: a real agent
// process, its CLI contracts, and go-spiffe clients over its real socket.
package e2e

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nodeward/nodeward/test/testutil"
)

var bin string

func TestMain(m *testing.M) { testutil.MainWithBinary(m, &bin) }

// selfEntries grants the nodeward CLI binary, run by this uid, an identity.
func selfEntries() string {
	return fmt.Sprintf("entries:\n  - spiffe_id: spiffe://example.org/cli\n    selectors: [unix:uid:%d, \"unix:path:%s\"]\n    dns_names: [cli.internal]\n", os.Geteuid(), bin)
}

func TestCLIFetchValidateHealthcheck(t *testing.T) {
	dir := testutil.SocketDir(t)
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", selfEntries())
	testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 10*time.Second)
	env := []string{"SPIFFE_ENDPOINT_SOCKET=unix://" + sock}

	out, errOut, code := testutil.Run(t, bin, env, "fetch", "x509")
	if code != 0 || !strings.Contains(out, "SPIFFE ID:        spiffe://example.org/cli") || !strings.Contains(out, "SVID valid until:") {
		t.Fatalf("fetch x509: code %d\n%s\n%s", code, out, errOut)
	}

	outDir := filepath.Join(t.TempDir(), "svid")
	_, errOut, code = testutil.Run(t, bin, nil, "fetch", "x509", "--socket", sock, "--out", outDir)
	if code != 0 {
		t.Fatalf("fetch x509 --out: %d %s", code, errOut)
	}
	for name, mode := range map[string]os.FileMode{"svid.pem": 0o644, "svid_key.pem": 0o600, "bundle.pem": 0o644} {
		st, err := os.Stat(filepath.Join(outDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s mode %v, want %v", name, st.Mode().Perm(), mode)
		}
	}
	certPEM, _ := os.ReadFile(filepath.Join(outDir, "svid.pem"))
	bundlePEM, _ := os.ReadFile(filepath.Join(outDir, "bundle.pem"))
	leaf := firstCert(t, certPEM)
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundlePEM) {
		t.Fatal("bundle.pem holds no certificate")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("written svid.pem does not verify against bundle.pem: %v", err)
	}

	out, errOut, code = testutil.Run(t, bin, env, "fetch", "jwt", "--audience", "svc")
	tok := regexp.MustCompile(`\s(eyJ[A-Za-z0-9_\-.]+)`).FindStringSubmatch(out)
	if code != 0 || tok == nil {
		t.Fatalf("fetch jwt: %d\n%s\n%s", code, out, errOut)
	}
	out, errOut, code = testutil.Run(t, bin, env, "validate", "--audience", "svc", tok[1])
	if code != 0 || !strings.Contains(out, "SPIFFE ID: spiffe://example.org/cli") {
		t.Fatalf("validate: %d\n%s\n%s", code, out, errOut)
	}
	_, errOut, code = testutil.Run(t, bin, env, "validate", "--audience", "other", tok[1])
	if code != 1 || strings.Contains(errOut, tok[1]) {
		t.Fatalf("validate wrong audience: code %d (want 1), token echoed=%v: %s", code, strings.Contains(errOut, tok[1]), errOut)
	}

	out, _, code = testutil.Run(t, bin, env, "fetch", "bundles")
	if code != 0 || !strings.Contains(out, "BEGIN CERTIFICATE") || !strings.Contains(out, `"kty":"EC"`) {
		t.Fatalf("fetch bundles: %d\n%s", code, out)
	}

	out, _, code = testutil.Run(t, bin, env, "healthcheck")
	if code != 0 || !strings.Contains(out, "healthy") {
		t.Fatalf("healthcheck: %d %s", code, out)
	}
}

func firstCert(t *testing.T, p []byte) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(p)
	if b == nil {
		t.Fatal("no PEM block")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCLIErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.sock")
	_, _, code := testutil.Run(t, bin, nil, "healthcheck", "--socket", missing, "--timeout", "500ms")
	if code != 1 {
		t.Errorf("healthcheck with no agent: code %d, want 1", code)
	}
	_, _, code = testutil.Run(t, bin, nil, "fetch", "jwt")
	if code != 2 {
		t.Errorf("fetch jwt without --audience: code %d, want 2", code)
	}
	_, _, code = testutil.Run(t, bin, nil, "frobnicate")
	if code != 2 {
		t.Errorf("unknown command: code %d, want 2", code)
	}
	out, _, code := testutil.Run(t, bin, nil, "version")
	if code != 0 || !strings.HasPrefix(out, "nodeward e2e") {
		t.Errorf("version: %d %q", code, out)
	}
}

func TestAgentRejectsUnknownConfigKey(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(p, []byte("trust_domain: example.org\ntrust_domian: typo.org\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := testutil.Run(t, bin, nil, "agent", "--config", p)
	if code != 78 || !strings.Contains(errOut, "agent.yaml:2") || !strings.Contains(errOut, "trust_domian") {
		t.Fatalf("unknown key: code %d, stderr %q; want file:line and key named", code, errOut)
	}
}

func TestStaleSocketReplacedAfterCrash(t *testing.T) {
	dir := testutil.SocketDir(t)
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", selfEntries())
	a := testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 10*time.Second)
	// Crash: SIGKILL leaves the socket file behind.
	_ = a.Cmd.Process.Kill()
	_ = a.Cmd.Wait()
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("socket file gone after SIGKILL: %v", err)
	}
	testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 10*time.Second)
	out, errOut, code := testutil.Run(t, bin, nil, "fetch", "x509", "--socket", sock)
	if code != 0 || !strings.Contains(out, "spiffe://example.org/cli") {
		t.Fatalf("after restart: %d %s %s", code, out, errOut)
	}
}

func TestSIGHUPReload(t *testing.T) {
	dir := testutil.SocketDir(t)
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", selfEntries())
	a := testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 10*time.Second)
	fetch := func() string {
		out, errOut, _ := testutil.Run(t, bin, nil, "fetch", "x509", "--socket", sock)
		return out + errOut
	}
	if out := fetch(); !strings.Contains(out, "spiffe://example.org/cli") {
		t.Fatalf("before reload: %s", out)
	}
	// A broken config is logged and the old policy keeps serving.
	if err := os.WriteFile(cfg, []byte("trust_domain: example.org\nsocket_path: "+sock+"\ndata_dir: "+filepath.Join(dir, "data")+"\nentries: {oops\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = a.Cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, a, "reload failed")
	if out := fetch(); !strings.Contains(out, "spiffe://example.org/cli") {
		t.Fatalf("after a bad reload: %s", out)
	}
	// A good config swaps the entries.
	testutil.WriteConfig(t, dir, "example.org", strings.ReplaceAll(selfEntries(), "/cli", "/reloaded"))
	_ = a.Cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, a, "reloaded policy")
	if out := fetch(); !strings.Contains(out, "spiffe://example.org/reloaded") {
		t.Fatalf("after reload: %s", out)
	}
}

func waitLog(t *testing.T, a *testutil.Agent, msg string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(a.Log(), msg) {
		if time.Now().After(deadline) {
			t.Fatalf("agent never logged %q", msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAttestCommand(t *testing.T) {
	out, errOut, code := testutil.Run(t, bin, nil, "attest", "--pid", fmt.Sprint(os.Getpid()))
	if code != 0 {
		t.Fatalf("attest: %d %s", code, errOut)
	}
	for _, want := range []string{fmt.Sprintf("unix:uid:%d", os.Geteuid()), "cgroup:path:/"} {
		if !strings.Contains(out, want) {
			t.Errorf("attest output lacks %s:\n%s", want, out)
		}
	}
	_, _, code = testutil.Run(t, bin, nil, "attest", "--pid", "999999999")
	if code != 1 {
		t.Errorf("attest of a missing pid: code %d, want 1", code)
	}
}

var update = flag.Bool("update", false, "rewrite golden files")

func TestEntriesCheckGolden(t *testing.T) {
	tests := []struct {
		file, golden string
		args         []string
		code         int
	}{
		{"testdata/entries-bad.yaml", "testdata/entries-bad.golden", []string{"--trust-domain", "example.org"}, 1},
		{"testdata/entries-good.yaml", "testdata/entries-good.golden", nil, 0},
	}
	for _, tt := range tests {
		args := append(append([]string{"entries", "check"}, tt.args...), tt.file)
		out, errOut, code := testutil.Run(t, bin, nil, args...)
		if code != tt.code {
			t.Errorf("%s: exit %d, want %d (%s)", tt.file, code, tt.code, errOut)
		}
		if *update {
			if err := os.WriteFile(tt.golden, []byte(out), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(tt.golden)
		if err != nil {
			t.Fatal(err)
		}
		if out != string(want) {
			t.Errorf("%s: output differs from %s (go test ./test/e2e -run Golden -update):\n got:\n%s\nwant:\n%s", tt.file, tt.golden, out, want)
		}
	}
	_, _, code := testutil.Run(t, bin, nil, "entries", "check", "testdata/missing.yaml")
	if code != 2 {
		t.Errorf("unreadable file: exit %d, want 2", code)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("entries:\n  - spiffe_id: spiffe://example.org/x\n    selectors: [nope]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := testutil.Run(t, bin, nil, "entries", "check", bad)
	if code != 2 || !strings.Contains(errOut, "bad.yaml:3") {
		t.Errorf("malformed file: exit %d (%s), want 2 naming bad.yaml:3", code, errOut)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestStatusCommand(t *testing.T) {
	dir := testutil.SocketDir(t)
	admin := freePort(t)
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", "admin_listen: "+admin+"\n"+selfEntries())
	testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 10*time.Second)
	if _, errOut, code := testutil.Run(t, bin, nil, "fetch", "x509", "--socket", sock); code != 0 {
		t.Fatal(errOut)
	}
	out, errOut, code := testutil.Run(t, bin, nil, "status", "--admin", admin)
	if code != 0 {
		t.Fatalf("status: %d %s", code, errOut)
	}
	for _, want := range []string{"trust domain: example.org", "ready:        true", "spiffe://example.org/cli", "IDENTITY", "ENTRY"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	out, _, code = testutil.Run(t, bin, nil, "status", "--admin", admin, "--json")
	var st struct {
		Entries    []map[string]any `json:"entries"`
		Identities []map[string]any `json:"identities"`
	}
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || len(st.Entries) != 1 || len(st.Identities) != 1 {
		t.Fatalf("status --json: %d %v %s", code, err, out)
	}
	if _, _, code := testutil.Run(t, bin, nil, "status", "--admin", freePort(t)); code != 1 {
		t.Errorf("status with no agent: exit %d, want 1", code)
	}
}
