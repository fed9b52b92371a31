package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nodeward/nodeward/agent/inventory"
	"github.com/nodeward/nodeward/agent/policy"
	"github.com/nodeward/nodeward/attestors/selector"
	"github.com/nodeward/nodeward/internal/audit"
)

// InventoryFile is the identity inventory's file in data_dir.
const InventoryFile = "inventory.json"

// openInventory opens data_dir's inventory with the guardrails' staleness.
func openInventory(dataDir string, staleAfter time.Duration, a *Agent) (*inventory.Inventory, error) {
	return inventory.Open(filepath.Join(dataDir, InventoryFile), inventory.Options{StaleAfter: staleAfter, Logger: a.log})
}

// inventoryEntries is the policy as the inventory records it.
func inventoryEntries(entries []*policy.Entry) []inventory.Entry {
	out := make([]inventory.Entry, 0, len(entries))
	for _, e := range entries {
		out = append(out, inventory.Entry{ID: e.ID, SPIFFEID: e.SPIFFEID.String(), Selectors: selector.Strings(e.Selectors),
			Owner: e.Owner, ExpiresAt: e.ExpiresAt})
	}
	return out
}

// recorder feeds the inventory from the Workload API's issue path.
type recorder struct{ inv *inventory.Inventory }

// RecordBrokerToken counts an access token the embedded broker served,
// obtained with the SVID of spiffeID, on the entries that grant that ID
// (the identity inventory's broker token count).
func (a *Agent) RecordBrokerToken(spiffeID string) {
	for _, e := range a.store.Index().Entries() {
		if e.SPIFFEID.String() == spiffeID {
			a.inv.Issued(e.ID, inventory.Token, nil)
		}
	}
}

// IssuedTo implements workloadapi.IssueRecorder.
func (r recorder) IssuedTo(entryID, kind string, c *audit.Caller) {
	k := inventory.X509
	if kind == "jwt" {
		k = inventory.JWT
	}
	var caller *inventory.Caller
	if c != nil {
		caller = &inventory.Caller{PID: c.PID, UID: c.UID, Binary: c.Binary, SystemdUnit: c.SystemdUnit,
			ContainerID: c.ContainerID, PodUID: c.PodUID}
	}
	r.inv.Issued(entryID, k, caller)
}

// Inventory is GET /v1/inventory: every entry the policy has had (entries
// removed from it are kept 30 days), sorted by SPIFFE ID.
type Inventory struct {
	StaleAfter string             `json:"stale_after"`
	Stale      int                `json:"stale"`
	Entries    []inventory.Record `json:"entries"`
}

// InventorySnapshot returns the identity inventory now.
func (a *Agent) InventorySnapshot() Inventory {
	return Inventory{StaleAfter: formatDays(time.Duration(a.config().Guardrails.StaleAfter)), Stale: a.inv.StaleCount(),
		Entries: a.inv.Snapshot()}
}

func (a *Agent) serveInventory(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(a.InventorySnapshot())
}

// formatDays writes whole days as the config does ("30d"), else as Go does.
func formatDays(d time.Duration) string {
	if d > 0 && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}

// EnableDir is the directory in data_dir where `nodeward inventory enable`
// leaves re-enable requests: one empty file per entry id. Only who can
// write data_dir (root or the agent's user, checked at start) can re-enable.
const EnableDir = "enable"

// enabled drops the entries the inventory has disabled as stale.
func (a *Agent) enabled(entries []*policy.Entry) []*policy.Entry {
	out := entries[:0:0]
	for _, e := range entries {
		if !a.inv.Disabled(e.ID) {
			out = append(out, e)
		}
	}
	return out
}

// staleLoop applies guardrails.disable_stale: it disables entries that
// became stale (an audit record each, open streams re-evaluated) and
// applies the operator's re-enable requests.
func (a *Agent) staleLoop(ctx context.Context) {
	for {
		g := a.config().Guardrails
		tick := 10 * time.Second
		if half := time.Duration(g.StaleAfter) / 2; half > 0 && half < tick {
			tick = half
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(tick):
		}
		changed := a.applyEnableRequests()
		if g.DisableStale {
			for _, id := range a.inv.DisableStale() {
				changed = true
				sid := ""
				if r, ok := a.inv.Record(id); ok {
					sid = r.SPIFFEID
				}
				reason := "stale: not issued for " + formatDays(time.Duration(g.StaleAfter))
				a.log.Warn("entry disabled: stale", "entry", id, "spiffe_id", sid, "stale_after", formatDays(time.Duration(g.StaleAfter)))
				a.obs.record(audit.Record{Event: "disable", Decision: "deny", Reason: reason, EntryID: id, SPIFFEID: sid})
			}
		}
		if changed {
			a.store.Reevaluate()
		}
	}
}

// applyEnableRequests re-enables the entries named in data_dir/enable and
// removes the requests; true when one was applied.
func (a *Agent) applyEnableRequests() bool {
	dir := filepath.Join(a.config().DataDir, EnableDir)
	st, err := os.Lstat(dir)
	if err != nil {
		return false
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); !ok || !st.IsDir() || st.Mode().Perm()&0o022 != 0 ||
		(sys.Uid != 0 && int(sys.Uid) != os.Geteuid()) {
		a.log.Warn("inventory: re-enable directory ignored: it must be a directory owned by root or the agent's user, not group- or other-writable", "dir", dir)
		return false
	}
	names, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	applied := false
	for _, n := range names {
		id := n.Name()
		_ = os.Remove(filepath.Join(dir, id))
		if !n.Type().IsRegular() || !a.inv.Enable(id) {
			a.log.Warn("inventory: ignored re-enable request", "entry", id)
			continue
		}
		applied = true
		a.log.Info("entry re-enabled by the operator", "entry", id)
		a.obs.record(audit.Record{Event: "enable", Decision: "allow", Reason: "operator", EntryID: id})
	}
	return applied
}
