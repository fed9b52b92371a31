package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nodeward/nodeward/agent"
)

// runStatus asks the agent's admin listener for its state.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("status", stderr)
	admin := fs.String("admin", "127.0.0.1:9464", "the agent's admin_listen address")
	asJSON := fs.Bool("json", false, "print the raw JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+*admin+"/v1/status", nil)
	if err != nil {
		return fmt.Errorf("%w: --admin: %v", errUsage, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("agent admin listener at %s: %w (is admin_listen set?)", *admin, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("read status: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status: HTTP %d", resp.StatusCode)
	}
	if *asJSON {
		_, err := stdout.Write(body)
		return err
	}
	var st agent.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("decode status: %w", err)
	}
	fmt.Fprintf(stdout, "trust domain: %s\nready:        %v\nuptime:       %s\nsocket:       %s\n", st.TrustDomain, st.Ready, st.Uptime, st.Socket)
	var streams []string
	for rpc, n := range st.Streams {
		streams = append(streams, fmt.Sprintf("%s=%d", rpc, n))
	}
	fmt.Fprintf(stdout, "open streams: %s\njwt cached:   %d\n\n", strings.Join(streams, " "), st.JWTCache)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "IDENTITY\tENTRY\tSERIAL\tEXPIRES\tROTATES\n")
	for _, id := range st.Identities {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", id.SPIFFEID, id.EntryID, id.Serial, id.ExpiresAt.UTC().Format(time.RFC3339), id.RotateAt.UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(tw, "\nENTRY\tSPIFFE ID\tSELECTORS\tOWNER\tEXPIRES\n")
	for _, e := range st.Entries {
		exp := "-"
		if e.ExpiresAt != nil {
			exp = e.ExpiresAt.UTC().Format(time.RFC3339)
			if e.Expired {
				exp += " (expired)"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.ID, e.SPIFFEID, strings.Join(e.Selectors, ","), e.Owner, exp)
	}
	return tw.Flush()
}
