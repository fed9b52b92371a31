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
	"github.com/nodeward/nodeward/broker"
)

// runStatus asks the agent's admin listener (or, with --broker, a broker's
// metrics_listen) for its state.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("status", stderr)
	admin := fs.String("admin", "127.0.0.1:9464", "the agent's admin_listen address")
	brokerAddr := fs.String("broker", "", "a standalone broker's metrics_listen address: show the broker instead of the agent")
	asJSON := fs.Bool("json", false, "print the raw JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	addr, what := *admin, "agent admin listener"
	if *brokerAddr != "" {
		addr, what = *brokerAddr, "broker metrics_listen"
	}
	body, err := getStatus(ctx, addr, what)
	if err != nil {
		return err
	}
	if *asJSON {
		_, err := stdout.Write(body)
		return err
	}
	if *brokerAddr != "" {
		var bs broker.Status
		if err := json.Unmarshal(body, &bs); err != nil {
			return fmt.Errorf("decode status: %w", err)
		}
		return printBrokerStatus(stdout, &bs)
	}
	var st struct {
		agent.Status
		Broker *broker.Status `json:"broker"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("decode status: %w", err)
	}
	if err := printAgentStatus(stdout, &st.Status); err != nil {
		return err
	}
	if st.Broker != nil {
		fmt.Fprintln(stdout, "\nbroker (inside the agent):")
		return printBrokerStatus(stdout, st.Broker)
	}
	return nil
}

func getStatus(ctx context.Context, addr, what string) ([]byte, error) {
	return getAdmin(ctx, addr, "/v1/status", what)
}

// getAdmin GETs path from an admin or metrics listener at addr.
func getAdmin(ctx context.Context, addr, path, what string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: address %q: %v", errUsage, addr, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s at %s: %w (is it configured?)", what, addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: HTTP %d", path, resp.StatusCode)
	}
	return body, nil
}

func printBrokerStatus(w io.Writer, bs *broker.Status) error {
	fmt.Fprintf(w, "identity:      %s\nlisten:        %s\ntokens cached: %d\n\n", bs.SPIFFEID, strings.Join(bs.Listen, " "), bs.TokensCached)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "UPSTREAM\tGRANT\tBREAKER\tTOKEN ENDPOINT\n")
	for _, u := range bs.Upstreams {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", u.Name, u.Grant, u.Breaker, u.TokenEndpoint)
	}
	return tw.Flush()
}

func printAgentStatus(stdout io.Writer, st *agent.Status) error {
	fmt.Fprintf(stdout, "trust domain: %s\nready:        %v\nuptime:       %s\nsocket:       %s\n", st.TrustDomain, st.Ready, st.Uptime, st.Socket)
	if n := st.Node; n != nil {
		fmt.Fprintf(stdout, "agent id:     %s\nnode:         %s\n", n.SPIFFEID, strings.Join(n.Selectors, " "))
	}
	mode := st.Mode
	if mode == "" {
		mode = "standalone"
	}
	fmt.Fprintf(stdout, "mode:         %s\n", mode)
	if sv := st.Server; sv != nil {
		printServerStatus(stdout, sv)
	}
	ca := "file (data_dir)"
	if st.CA.Key == "server" {
		ca = "server (the SPIRE server signs)"
	} else if st.CA.Key == "tpm" && st.CA.IntermediateNotAfter != nil {
		ca = fmt.Sprintf("tpm (intermediate until %s, rotates %s)", st.CA.IntermediateNotAfter.UTC().Format(time.RFC3339), st.CA.IntermediateRotatesAt.UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(stdout, "ca key:       %s\n", ca)
	for _, au := range st.CA.Authorities {
		exp := "-"
		if !au.Expires.IsZero() {
			exp = au.Expires.UTC().Format(time.RFC3339)
		}
		extra := ""
		if au.TPMHandle != "" {
			extra += ", tpm handle " + au.TPMHandle
		}
		if au.ActivatesAt != nil {
			extra += ", activates " + au.ActivatesAt.UTC().Format(time.RFC3339)
		}
		if au.DropsAt != nil {
			extra += ", leaves the bundle " + au.DropsAt.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(stdout, "ca %-4s      %-8s %s (expires %s%s)\n", au.Kind, au.State, au.ID, exp, extra)
	}
	var streams []string
	for rpc, n := range st.Streams {
		streams = append(streams, fmt.Sprintf("%s=%d", rpc, n))
	}
	fmt.Fprintf(stdout, "open streams: %s\njwt cached:   %d\nstale:        %d entries (nodeward inventory)\n\n", strings.Join(streams, " "), st.JWTCache, st.StaleEntries)
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

// printServerStatus prints the SPIRE server part of the status (fleet mode).
func printServerStatus(w io.Writer, sv *agent.ServerStatus) {
	at := func(t *time.Time) string {
		if t == nil {
			return "never"
		}
		return t.UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(w, "server:       %s\n", sv.Address)
	if sv.AgentID != "" {
		fmt.Fprintf(w, "agent id:     %s (SVID until %s)\n", sv.AgentID, at(sv.AgentExpiresAt))
	}
	fmt.Fprintf(w, "last sync:    %s (%d entries", at(sv.LastSync), sv.Entries)
	if sv.SkippedEntries > 0 {
		fmt.Fprintf(w, ", %d never match a workload here", sv.SkippedEntries)
	}
	fmt.Fprintf(w, ", bundle sequence %d)\n", sv.BundleSequence)
	if sv.GuardrailFindings > 0 {
		fmt.Fprintf(w, "guardrails:   %d findings on the server's entries (in the log; reported, not enforced)\n", sv.GuardrailFindings)
	}
	if sv.UnreachableSince != nil {
		fmt.Fprintf(w, "UNREACHABLE:  since %s: %s\n", at(sv.UnreachableSince), sv.LastError)
	}
}
