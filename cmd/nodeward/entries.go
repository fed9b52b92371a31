package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodeward/nodeward/agent"
	"github.com/nodeward/nodeward/agent/config"
	"github.com/nodeward/nodeward/agent/policy"
)

// errFindings makes `entries check` exit 1; unreadable input exits 2.
var errFindings = errors.New("findings")

func runEntries(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "check" {
		return fmt.Errorf("%w: entries check FILE", errUsage)
	}
	fs := newFlagSet("entries check", stderr)
	tdFlag := fs.String("trust-domain", "", "check SPIFFE IDs against this trust domain (an agent config's own is used otherwise)")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: entries check FILE", errUsage)
	}
	path := fs.Arg(0)
	// FILE is an entries file (only `entries:`) or a whole agent config.
	cfg := config.Default()
	cfg.TrustDomain = ""
	entries, err := config.LoadEntries(path)
	if errors.Is(err, config.ErrUnknownKey) {
		cfg, err = config.Load(path)
		if err == nil {
			entries = cfg.Entries
		}
	}
	if err != nil {
		return fmt.Errorf("%w: %v", errUnreadable, err)
	}
	if *tdFlag != "" {
		if _, err := spiffeid.TrustDomainFromString(*tdFlag); err != nil {
			return fmt.Errorf("%w: --trust-domain: %v", errUsage, err)
		}
		cfg.TrustDomain = *tdFlag
	}
	findings := policy.Check(agent.PolicyEntries(entries), agent.CheckOptions(cfg, time.Now()))
	errs, warns := 0, 0
	for _, f := range findings {
		fmt.Fprintln(stdout, f.String())
		if f.Severity == policy.SeverityError {
			errs++
		} else {
			warns++
		}
	}
	fmt.Fprintf(stdout, "%d entries, %d errors, %d warnings\n", len(entries), errs, warns)
	if len(findings) > 0 {
		return errFindings
	}
	return nil
}

// errUnreadable makes a command exit 2: its input could not be read or parsed.
var errUnreadable = errors.New("unreadable")
