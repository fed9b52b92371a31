package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nodeward/nodeward/agent/ca"
	"github.com/nodeward/nodeward/agent/config"
)

// caRequestWait is how long `nodeward ca` waits for the running agent to
// apply its request (the agent polls every second).
const caRequestWait = 10 * time.Second

// runCA is `nodeward ca rotate [--jwt]`, `nodeward ca rotate --tpm-root
// [--activate-after D]` and `nodeward ca taint [--jwt] ID`: it leaves a
// request in data_dir/ca_requests for the running agent and prints the
// outcome.
func runCA(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("ca", stderr)
	jwt := fs.Bool("jwt", false, "the JWT signing key instead of the X.509 root")
	tpmRoot := fs.Bool("tpm-root", false, "rotate: a new TPM-held root (ca.key tpm), published first, active after --activate-after")
	activateAfter := fs.String("activate-after", "", "with --tpm-root: how long the new root is published before it signs (default twice the bundle refresh hint; 0s: at once)")
	dataDir := fs.String("data-dir", config.DefaultDataDir(), "the agent's data_dir")
	if err := parseFlags(fs, args); err != nil {
		if strings.Contains(err.Error(), "flag provided but not defined") {
			// A JWT key id is base64url and may start with "-".
			return fmt.Errorf("%w (an ID that starts with - goes after --: nodeward ca taint --jwt -- ID)", err)
		}
		return err
	}
	kind := ca.KindX509
	if *jwt {
		kind = ca.KindJWT
	}
	const usage = "ca rotate [--jwt] [--data-dir DIR] | ca rotate --tpm-root [--activate-after DURATION] [--data-dir DIR] | ca taint [--jwt] [--data-dir DIR] AUTHORITY_ID|SERIAL|KID"
	if *activateAfter != "" {
		if d, err := time.ParseDuration(*activateAfter); err != nil || d < 0 {
			return fmt.Errorf("%w: --activate-after %q: want a duration such as 10m or 0s: %s", errUsage, *activateAfter, usage)
		}
	}
	rest := fs.Args()
	var req ca.Request
	switch {
	case len(rest) == 1 && rest[0] == "rotate" && *tpmRoot && !*jwt:
		req = ca.Request{Action: "rotate-tpm-root", Kind: ca.KindX509, ActivateAfter: *activateAfter}
	case *tpmRoot || *activateAfter != "":
		return fmt.Errorf("%w: --tpm-root (with --activate-after) only with rotate, not with --jwt: %s", errUsage, usage)
	case len(rest) == 1 && rest[0] == "rotate":
		req = ca.Request{Action: "rotate", Kind: kind}
	case len(rest) == 2 && rest[0] == "taint" && rest[1] != "":
		req = ca.Request{Action: "taint", Kind: kind, Ref: rest[1]}
	default:
		return fmt.Errorf("%w: %s", errUsage, usage)
	}
	return caRequest(ctx, *dataDir, req, stdout)
}

// caRequest writes req to data_dir/ca_requests (owned like data_dir) and
// waits for the agent's outcome.
func caRequest(ctx context.Context, dataDir string, req ca.Request, stdout io.Writer) error {
	st, err := os.Stat(dataDir)
	if err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	sys, _ := st.Sys().(*syscall.Stat_t)
	dir := filepath.Join(dataDir, ca.RequestDir)
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("ca request: %w", err)
	}
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return fmt.Errorf("ca request: %w", err)
	}
	name := hex.EncodeToString(rnd[:])
	data, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("ca request: %w", err)
	}
	tmp := filepath.Join(dir, name+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("ca request: %w", err)
	}
	if sys != nil {
		// The agent may run as its own user: give the request its owner.
		for _, p := range []string{dir, tmp} {
			if err := os.Chown(p, int(sys.Uid), int(sys.Gid)); err != nil {
				_ = os.Remove(tmp)
				return fmt.Errorf("ca request: %w", err)
			}
		}
	}
	if err := os.Rename(tmp, filepath.Join(dir, name+".req")); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("ca request: %w", err)
	}
	done := filepath.Join(dir, name+".done")
	deadline := time.NewTimer(caRequestWait)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if data, err := os.ReadFile(done); err == nil {
			_ = os.Remove(done)
			var out ca.Outcome
			if err := json.Unmarshal(data, &out); err != nil {
				return fmt.Errorf("ca request: unreadable outcome: %w", err)
			}
			if !out.OK {
				return fmt.Errorf("the agent refused: %s", out.Message)
			}
			fmt.Fprintln(stdout, out.Message)
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("ca request %s %s: the agent did not answer within %s (is it running with data_dir %s?); the request stays in %s and is applied when the agent runs",
				req.Action, req.Kind, caRequestWait, dataDir, dir)
		case <-tick.C:
		}
	}
}
