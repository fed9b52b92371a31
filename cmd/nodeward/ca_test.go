package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodeward/nodeward/agent/ca"
)

// TestCACommandUsage: wrong words are usage errors (exit 2).
func TestCACommandUsage(t *testing.T) {
	for _, args := range [][]string{{"ca"}, {"ca", "rotate", "x"}, {"ca", "taint"}, {"ca", "bogus"},
		{"ca", "rotate", "--tpm-root", "--jwt"}, {"ca", "taint", "--tpm-root", "abc"}, {"ca", "rotate", "--activate-after", "5s"},
		{"ca", "rotate", "--tpm-root", "--activate-after", "soon"}, {"ca", "rotate", "--tpm-root", "--activate-after", "-5s"}} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 2 || !strings.Contains(errb.String(), "ca rotate [--jwt]") {
			t.Errorf("%v: exit %d, stderr %q", args, code, errb.String())
		}
	}
}

// TestCACommandAgainstRunningCA: `nodeward ca rotate --jwt` and `ca taint
// --jwt KID` through the request directory of a real running CA.
func TestCACommandAgainstRunningCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	c, err := ca.LoadOrCreate(ca.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), Dir: dir,
		KeyTTL: time.Hour, JWTKeyTTL: time.Hour, TickInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	old := c.JWTKeyID()
	var out, errb bytes.Buffer
	if code := run([]string{"ca", "rotate", "--jwt", "--data-dir", dir}, &out, &errb); code != 0 || !strings.Contains(out.String(), "rotated: new active jwt authority") {
		t.Fatalf("rotate: exit %d, %q %q", code, out.String(), errb.String())
	}
	if c.JWTKeyID() == old {
		t.Fatal("not rotated")
	}
	out.Reset()
	errb.Reset()
	if code := run([]string{"ca", "taint", "--jwt", "--data-dir", dir, "--", c.JWTKeyID()}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "active key") {
		t.Fatalf("taint of the active key: exit %d, %q", code, errb.String())
	}
	// A kid is base64url: one that starts with "-" reads as a flag unless
	// it comes after "--", and the error says so.
	errb.Reset()
	if code := run([]string{"ca", "taint", "--jwt", "--data-dir", dir, "-8Mnl"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "goes after --") {
		t.Fatalf("an ID that looks like a flag: exit %d, %q", code, errb.String())
	}
	out.Reset()
	if code := run([]string{"ca", "taint", "--jwt", "--data-dir", dir, "--", old}, &out, &errb); code != 0 || !c.JWTKeyTainted(old) {
		t.Fatalf("taint: exit %d, %q %q", code, out.String(), errb.String())
	}
	if _, err := os.Stat(filepath.Join(dir, ca.RequestDir)); err != nil {
		t.Fatal(err)
	}
	// A file-held root has no TPM root to rotate: the agent says which
	// command to use instead.
	out.Reset()
	errb.Reset()
	if code := run([]string{"ca", "rotate", "--tpm-root", "--data-dir", dir}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "not held in the TPM") {
		t.Fatalf("rotate --tpm-root of a file-held root: exit %d, %q %q", code, out.String(), errb.String())
	}
}
