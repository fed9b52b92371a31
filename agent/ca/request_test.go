package ca

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeRequest(t *testing.T, dir, name string, r Request, mode os.FileMode) {
	t.Helper()
	rd := filepath.Join(dir, RequestDir)
	if err := os.MkdirAll(rd, 0o700); err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(r)
	if err := os.WriteFile(filepath.Join(rd, name), data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(rd, name), mode); err != nil {
		t.Fatal(err)
	}
}

// waitOutcome polls for NAME.done with a deadline.
func waitOutcome(t *testing.T, dir, name string) Outcome {
	t.Helper()
	p := filepath.Join(dir, RequestDir, name+".done")
	deadline := time.Now().Add(20 * time.Second)
	for {
		if data, err := os.ReadFile(p); err == nil {
			var o Outcome
			if err := json.Unmarshal(data, &o); err != nil {
				t.Fatal(err)
			}
			return o
		}
		if time.Now().After(deadline) {
			t.Fatalf("no outcome for %s", name)
		}
		time.Sleep(20 * time.Millisecond) // polling with a deadline
	}
}

// TestRunAppliesRequests: the running CA applies a rotate request from the
// request directory within its tick, and refuses one open to others.
func TestRunAppliesRequests(t *testing.T) {
	dir := dataDir(t)
	c, err := LoadOrCreate(Config{TrustDomain: td, Dir: dir, KeyTTL: time.Hour, JWTKeyTTL: time.Hour, TickInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	oldKid := c.JWTKeyID()
	ch := c.Changed()
	writeRequest(t, dir, "a1.req", Request{Action: "rotate", Kind: KindJWT}, 0o600)
	if o := waitOutcome(t, dir, "a1"); !o.OK || !strings.Contains(o.Message, "rotated") {
		t.Fatalf("outcome %+v", o)
	}
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("Changed not closed after an applied rotate")
	}
	if c.JWTKeyID() == oldKid {
		t.Fatal("JWT key not rotated")
	}
	writeRequest(t, dir, "a2.req", Request{Action: "taint", Kind: KindJWT, Ref: oldKid}, 0o644)
	if o := waitOutcome(t, dir, "a2"); o.OK || !strings.Contains(o.Message, "refused") {
		t.Fatalf("request open to others: %+v", o)
	}
	if c.JWTKeyTainted(oldKid) {
		t.Fatal("a refused request was applied")
	}
	writeRequest(t, dir, "a3.req", Request{Action: "taint", Kind: KindJWT, Ref: oldKid}, 0o600)
	if o := waitOutcome(t, dir, "a3"); !o.OK {
		t.Fatalf("taint: %+v", o)
	}
	if !c.JWTKeyTainted(oldKid) {
		t.Fatal("taint request not applied")
	}
	if _, err := os.Stat(filepath.Join(dir, RequestDir, "a3.req")); !os.IsNotExist(err) {
		t.Fatalf("applied request left behind: %v", err)
	}
}

// TestTPMRootRotatesOnlyJWT: with a TPM-held (here: external) root, the
// JWT key rotates, the root stays, and rotate of the root is refused.
func TestTPMRootRotatesOnlyJWT(t *testing.T) {
	clk := &fakeClock{now: t0}
	dir := dataDir(t)
	root := externalRoot(t)
	cfg := Config{TrustDomain: td, Dir: dir, Clock: clk.Now, RootSigner: root, IntermediateTTL: time.Hour, KeyTTL: lifeTTL, JWTKeyTTL: lifeTTL}
	c, err := LoadOrCreate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	roots := c.X509Authorities()
	kid := c.JWTKeyID()
	if err := c.Rotate(KindX509); err == nil {
		t.Fatal("rotate of a TPM-held root accepted")
	}
	clk.Set(t0.Add(lifeTTL))
	if err := c.Advance(); err != nil {
		t.Fatal(err)
	}
	if c.JWTKeyID() == kid {
		t.Fatal("JWT key did not rotate")
	}
	if got := c.X509Authorities(); len(got) != 1 || !got[0].Equal(roots[0]) {
		t.Fatalf("roots changed: %d", len(got))
	}
	c2, err := LoadOrCreate(cfg)
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	if c2.JWTKeyID() != c.JWTKeyID() {
		t.Fatal("restart lost the rotated JWT key")
	}
}
