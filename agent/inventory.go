package agent

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"time"

	"github.com/nodeward/nodeward/agent/inventory"
	"github.com/nodeward/nodeward/agent/policy"
	"github.com/nodeward/nodeward/attestors/selector"
	"github.com/nodeward/nodeward/workloadapi/audit"
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
