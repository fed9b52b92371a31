// Command nodeward is the node-local workload identity agent and its client
// commands. This file holds only subcommand dispatch; each subcommand lives in
// its own file.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Set by the linker: -X main.version=... -X main.commit=...
var (
	version = "dev"
	commit  = "unknown"
)

// errUsage marks a command-line mistake (exit code 2).
var errUsage = errors.New("usage")

// errConfig marks a daemon's config file that does not load (exit code
// exitConfig), so that a unit can restart on every other exit
// (RestartPreventExitStatus=78) without looping on a config mistake.
var errConfig = errors.New("config")

// exitConfig is the exit code of a config error: EX_CONFIG of sysexits.h.
const exitConfig = 78

type command struct {
	name  string
	usage string
	run   func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"agent", "agent [--config FILE]            run the node agent", runAgent},
		{"broker", "broker --config FILE              run the token broker", runBroker},
		{"token", "token --upstream NAME [--audience A] [--scope S]  get an access token from the broker", runToken},
		{"fetch", "fetch x509|jwt|bundles [flags]  fetch SVIDs or bundles from the agent", runFetch},
		{"validate", "validate --audience A TOKEN     validate a JWT-SVID through the agent", runValidate},
		{"attest", "attest --pid PID [--json]        print the selectors the agent derives for a process", runAttest},
		{"entries", "entries check FILE                check registration entries against the guardrails (exit 0 ok, 1 findings, 2 unreadable)", runEntries},
		{"node", "node attest|verify|devid [flags] TPM node attestation: print evidence, verify it (with credential activation), or provision a DevID key", runNode},
		{"status", "status [--admin ADDR] [--json]   show identities, entries, streams and caches", runStatus},
		{"inventory", "inventory [--admin ADDR] [--json|--csv] | inventory enable ENTRY_ID  the identity inventory; re-enable a stale-disabled entry", runInventory},
		{"gameday", "gameday --upstream NAME [--broker SOCK] [--outage 60s] [--json]  rehearse an IdP outage on this node (bounded, reverted)", runGameday},
		{"ca", "ca rotate [--jwt|--tpm-root] | ca taint [--jwt] AUTHORITY_ID|SERIAL|KID  rotate the CA root or JWT key now; drop an old one from the bundle", runCA},
		{"healthcheck", "healthcheck [--socket S]        exit 0 when the agent answers", runHealthcheck},
		{"version", "version                         print the version", runVersion},
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: nodeward COMMAND [flags]")
	fmt.Fprintln(w, "\ncommands:")
	for _, c := range commands() {
		fmt.Fprintln(w, "  "+c.usage)
	}
	fmt.Fprintln(w, "\nClient commands find the agent via --socket or SPIFFE_ENDPOINT_SOCKET.")
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdout, stderr)
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.Is(err, errFindings):
			return 1
		case errors.Is(err, errUnreadable):
			fmt.Fprintf(stderr, "nodeward %s: %v\n", c.name, err)
			return 2
		case errors.Is(err, errUsage):
			fmt.Fprintf(stderr, "nodeward %s: %v\n", c.name, err)
			return 2
		case errors.Is(err, errConfig):
			fmt.Fprintf(stderr, "nodeward %s: %v\n", c.name, err)
			return exitConfig
		default:
			fmt.Fprintf(stderr, "nodeward %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "nodeward: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

// newFlagSet returns a flag set that reports errors instead of exiting.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("nodeward "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parseFlags parses args, turning flag errors into errUsage. Flags may come
// before, between or after positional arguments (`entries check FILE
// --trust-domain TD`); "--" ends the flags, and everything after it is
// positional. fs.Args() then holds the positional arguments in order.
func parseFlags(fs *flag.FlagSet, args []string) error {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return err
			}
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			pos = append(pos, rest...) // Parse stopped at "--"
			break
		}
		pos = append(pos, rest[0]) // a positional argument; flags may follow
		args = rest[1:]
	}
	// Leave exactly the positional arguments in fs.Args().
	if err := fs.Parse(append([]string{"--"}, pos...)); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	return nil
}

func runVersion(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("version", stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "nodeward %s (commit %s)\n", version, commit)
	return nil
}
