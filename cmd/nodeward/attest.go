package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"

	"github.com/nodeward/nodeward/agent"
	"github.com/nodeward/nodeward/attestors/selector"
)

// runAttest prints the selectors the agent would derive for a process, so
// operators can write entries without guessing. It reads /proc directly:
// run it as the agent's user (root) to see what the agent sees.
func runAttest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("attest", stderr)
	pid := fs.Int("pid", 0, "process to attest")
	asJSON := fs.Bool("json", false, "print a JSON array")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *pid <= 0 {
		return fmt.Errorf("%w: --pid is required", errUsage)
	}
	ua, attestors := agent.BuiltIns(slog.New(slog.DiscardHandler))
	ua.SetHashing(true)
	sels, err := agent.AttestPID(ctx, attestors, int32(*pid), agent.DefaultAttestTimeout)
	if err != nil {
		return err
	}
	out := selector.Strings(selector.Sort(sels))
	if *asJSON {
		b, err := json.MarshalIndent(out, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, string(b))
		return nil
	}
	for _, s := range out {
		fmt.Fprintln(stdout, s)
	}
	return nil
}
