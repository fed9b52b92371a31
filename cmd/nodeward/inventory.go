package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nodeward/nodeward/agent"
	"github.com/nodeward/nodeward/agent/config"
	"github.com/nodeward/nodeward/agent/inventory"
)

// runInventory prints the agent's identity inventory (GET /v1/inventory on
// the admin listener): a table, --json (the raw answer) or --csv.
func runInventory(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("inventory", stderr)
	admin := fs.String("admin", "127.0.0.1:9464", "the agent's admin_listen address")
	asJSON := fs.Bool("json", false, "print the raw JSON")
	asCSV := fs.Bool("csv", false, "print CSV (one row per entry)")
	dataDir := fs.String("data-dir", config.DefaultDataDir(), "the agent's data_dir (inventory enable)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if rest := fs.Args(); len(rest) > 0 {
		if len(rest) != 2 || rest[0] != "enable" {
			return fmt.Errorf("%w: inventory [--json|--csv] | inventory enable ENTRY_ID [--data-dir DIR]", errUsage)
		}
		return enableEntry(*dataDir, rest[1], stdout)
	}
	if *asJSON && *asCSV {
		return fmt.Errorf("%w: --json and --csv exclude each other", errUsage)
	}
	body, err := getAdmin(ctx, *admin, "/v1/inventory", "agent admin listener")
	if err != nil {
		return err
	}
	if *asJSON {
		_, err := stdout.Write(body)
		return err
	}
	var inv agent.Inventory
	if err := json.Unmarshal(body, &inv); err != nil {
		return fmt.Errorf("decode inventory: %w", err)
	}
	if *asCSV {
		return printInventoryCSV(stdout, inv.Entries)
	}
	fmt.Fprintf(stdout, "entries: %d, stale (not issued for %s): %d\n\n", len(inv.Entries), inv.StaleAfter, inv.Stale)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "SPIFFE ID\tENTRY\tOWNER\tLAST ISSUED\tLAST CALLER\tX509\tJWT\tSTATE\n")
	for _, r := range inv.Entries {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", r.SPIFFEID, r.EntryID, dash(r.Owner), timeOrDash(r.LastIssued),
			callerString(r.LastCaller), r.X509Issued, r.JWTIssued, state(r))
	}
	return tw.Flush()
}

// enableEntry leaves a re-enable request for a stale-disabled entry in
// data_dir/enable, owned like data_dir: the agent applies it within
// seconds (an audit record "enable"). Only who can write data_dir can.
func enableEntry(dataDir, id string, stdout io.Writer) error {
	if !entryIDPattern.MatchString(id) {
		return fmt.Errorf("%w: %q is not an entry id (the ENTRY column of nodeward inventory)", errUsage, id)
	}
	st, err := os.Stat(dataDir)
	if err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	sys, _ := st.Sys().(*syscall.Stat_t)
	dir := filepath.Join(dataDir, agent.EnableDir)
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("re-enable request: %w", err)
	}
	p := filepath.Join(dir, id)
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		return fmt.Errorf("re-enable request: %w", err)
	}
	if sys != nil {
		// The agent may run as its own user: give the request its owner.
		if err := os.Chown(dir, int(sys.Uid), int(sys.Gid)); err != nil {
			return fmt.Errorf("re-enable request: %w", err)
		}
		if err := os.Chown(p, int(sys.Uid), int(sys.Gid)); err != nil {
			return fmt.Errorf("re-enable request: %w", err)
		}
	}
	fmt.Fprintf(stdout, "re-enable of entry %s requested; the agent applies it within 10 s\n", id)
	return nil
}

// entryIDPattern is the shape of entry ids: explicit ids of the config
// ([A-Za-z0-9._-]) or derived hex.
var entryIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$`)

func printInventoryCSV(w io.Writer, recs []inventory.Record) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"spiffe_id", "entry_id", "selectors", "owner", "created", "changed", "removed", "expires",
		"first_issued", "last_issued", "last_caller_uid", "last_caller_binary", "last_caller_unit", "last_caller_container",
		"x509_issued", "jwt_issued", "tokens_issued", "stale", "disabled"})
	for _, r := range recs {
		uid, bin, unit, ctr := "", "", "", ""
		if c := r.LastCaller; c != nil {
			uid, bin, unit, ctr = strconv.FormatUint(uint64(c.UID), 10), c.Binary, c.SystemdUnit, c.ContainerID
		}
		_ = cw.Write([]string{r.SPIFFEID, r.EntryID, strings.Join(r.Selectors, " "), r.Owner, stamp(r.Created), stamp(r.Changed),
			stamp(r.Removed), stamp(r.ExpiresAt), stamp(r.FirstIssued), stamp(r.LastIssued), uid, bin, unit, ctr,
			strconv.FormatUint(r.X509Issued, 10), strconv.FormatUint(r.JWTIssued, 10), strconv.FormatUint(r.TokensIssued, 10),
			strconv.FormatBool(r.Stale), strconv.FormatBool(r.Disabled)})
	}
	cw.Flush()
	return cw.Error()
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func timeOrDash(t time.Time) string { return dash(stamp(t)) }

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func callerString(c *inventory.Caller) string {
	if c == nil {
		return "-"
	}
	s := fmt.Sprintf("uid %d", c.UID)
	switch {
	case c.SystemdUnit != "":
		s += " " + c.SystemdUnit
	case c.ContainerID != "":
		s += " container " + c.ContainerID
	case c.Binary != "":
		s += " " + c.Binary
	}
	return s
}

func state(r inventory.Record) string {
	switch {
	case !r.Removed.IsZero():
		return "removed"
	case r.Disabled:
		return "disabled"
	case r.Stale:
		return "stale"
	}
	return "active"
}
