package e2e

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodeward/nodeward/agent"
	"github.com/nodeward/nodeward/agent/inventory"
	"github.com/nodeward/nodeward/test/testutil"
)

func inventoryOf(t *testing.T, admin string) agent.Inventory {
	t.Helper()
	out, errOut, code := testutil.Run(t, bin, nil, "inventory", "--json", "--admin", admin)
	if code != 0 {
		t.Fatalf("nodeward inventory: exit %d: %s", code, errOut)
	}
	var inv agent.Inventory
	if err := json.Unmarshal([]byte(out), &inv); err != nil {
		t.Fatalf("inventory JSON %q: %v", out, err)
	}
	return inv
}

func recordOf(inv agent.Inventory, spiffeID string) (inventory.Record, bool) {
	for _, r := range inv.Entries {
		if r.SPIFFEID == spiffeID {
			return r, true
		}
	}
	return inventory.Record{}, false
}

// TestInventoryRecordsUseAndSurvivesKill9: issuance is recorded per entry
// (counts, first/last issued, last caller), unused entries turn stale, and
// the inventory file survives a SIGKILL of the agent with everything older
// than its one-second flush interval.
func TestInventoryRecordsUseAndSurvivesKill9(t *testing.T) {
	dir := testutil.SocketDir(t)
	admin := "127.0.0.1:" + testutil.FreePort(t)
	entries := fmt.Sprintf(`admin_listen: %s
guardrails:
  stale_after: 2s
entries:
  - spiffe_id: spiffe://example.org/used
    owner: team-a
    selectors: [unix:uid:%d, "unix:path:%s"]
  - spiffe_id: spiffe://example.org/never-used
    selectors: [unix:uid:4242]
`, admin, os.Geteuid(), bin)
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", entries)
	a := testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 10*time.Second)

	for _, args := range [][]string{{"fetch", "x509", "--socket", sock}, {"fetch", "jwt", "--audience", "api", "--socket", sock}} {
		if _, errOut, code := testutil.Run(t, bin, nil, args...); code != 0 {
			t.Fatalf("%v: %s", args, errOut)
		}
	}
	inv := inventoryOf(t, admin)
	used, ok := recordOf(inv, "spiffe://example.org/used")
	if !ok || used.X509Issued < 1 || used.JWTIssued != 1 || used.Owner != "team-a" || used.FirstIssued.IsZero() {
		t.Fatalf("inventory of the used entry: %+v (ok %v)", used, ok)
	}
	if used.LastCaller == nil || used.LastCaller.UID != uint32(os.Geteuid()) || used.LastCaller.Binary != bin {
		t.Fatalf("last caller %+v, want uid %d binary %s", used.LastCaller, os.Geteuid(), bin)
	}
	created := used.Created

	// The never-used entry turns stale after stale_after; status and the
	// metric count it.
	deadline := time.Now().Add(15 * time.Second)
	for {
		r, _ := recordOf(inventoryOf(t, admin), "spiffe://example.org/never-used")
		if r.Stale {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never-used entry not stale after stale_after: %+v", r)
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, errOut, code := testutil.Run(t, bin, nil, "status", "--json", "--admin", admin)
	if code != 0 || !strings.Contains(out, `"stale_entries":`) {
		t.Fatalf("status: %d %s %s", code, out, errOut)
	}
	var st agent.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.StaleEntries < 1 {
		t.Fatalf("status stale_entries = %d (%v)", st.StaleEntries, err)
	}
	if v := scrape(t, admin, "nodeward_stale_entries"); v < 1 {
		t.Fatalf("nodeward_stale_entries = %v", v)
	}

	// CSV: a header and one row per entry.
	out, errOut, code = testutil.Run(t, bin, nil, "inventory", "--csv", "--admin", admin)
	if code != 0 {
		t.Fatalf("inventory --csv: %s", errOut)
	}
	rows, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil || len(rows) != 3 || rows[0][0] != "spiffe_id" {
		t.Fatalf("inventory --csv: %v\n%s", err, out)
	}

	// Wait until the file holds the JWT issue, then SIGKILL.
	path := filepath.Join(dir, "data", agent.InventoryFile)
	deadline = time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), `"jwt_issued":1`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("inventory file never held the JWT issue: %s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("inventory file: %v mode %v, want 0600", err, st.Mode().Perm())
	}
	if err := a.Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = a.Cmd.Wait() // "signal: killed"

	testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 10*time.Second)
	after, ok := recordOf(inventoryOf(t, admin), "spiffe://example.org/used")
	if !ok || after.JWTIssued != 1 || after.X509Issued < 1 || !after.Created.Equal(created) || after.LastCaller == nil {
		t.Fatalf("after kill -9 and restart: %+v (before: created %v)", after, created)
	}
}

// TestDisableStaleAndOperatorReEnable: with guardrails.disable_stale an entry
// unused for stale_after stops issuing (an audit record says why) until the
// operator re-enables it with `nodeward inventory enable`; a re-enable
// request planted by another user in a directory it could write is ignored.
func TestDisableStaleAndOperatorReEnable(t *testing.T) {
	dir := testutil.SocketDir(t)
	admin := "127.0.0.1:" + testutil.FreePort(t)
	entries := fmt.Sprintf(`admin_listen: %s
guardrails:
  stale_after: 2s
  disable_stale: true
entries:
  - spiffe_id: spiffe://example.org/sleepy
    selectors: [unix:uid:%d, "unix:path:%s"]
`, admin, os.Geteuid(), bin)
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", entries)
	testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 10*time.Second)
	fetch := func() (string, int) {
		_, errOut, code := testutil.Run(t, bin, nil, "fetch", "x509", "--socket", sock)
		return errOut, code
	}
	if errOut, code := fetch(); code != 0 {
		t.Fatalf("fresh entry: %s", errOut)
	}

	var rec inventory.Record
	deadline := time.Now().Add(20 * time.Second)
	for {
		rec, _ = recordOf(inventoryOf(t, admin), "spiffe://example.org/sleepy")
		if rec.Disabled {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stale entry never disabled: %+v", rec)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if errOut, code := fetch(); code == 0 || !strings.Contains(errOut, "PermissionDenied") {
		t.Fatalf("a disabled entry still issued (exit %d): %s", code, errOut)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "audit.log"))
	if !strings.Contains(string(b), `"event":"disable"`) || !strings.Contains(string(b), "stale: not issued for 2s") {
		t.Fatalf("no audit record of the disable:\n%s", b)
	}

	// A group/other-writable request directory is ignored.
	enable := filepath.Join(dir, "data", agent.EnableDir)
	if err := os.Mkdir(enable, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(enable, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(enable, rec.EntryID), nil, 0o666); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if r, _ := recordOf(inventoryOf(t, admin), "spiffe://example.org/sleepy"); !r.Disabled {
			t.Fatal("a request in an other-writable directory re-enabled the entry")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := os.RemoveAll(enable); err != nil {
		t.Fatal(err)
	}

	out, errOut, code := testutil.Run(t, bin, nil, "inventory", "enable", rec.EntryID, "--data-dir", filepath.Join(dir, "data"))
	if code != 0 {
		t.Fatalf("inventory enable: %s %s", out, errOut)
	}
	deadline = time.Now().Add(15 * time.Second)
	for {
		if _, code := fetch(); code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("re-enabled entry does not issue")
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, _ = os.ReadFile(filepath.Join(dir, "audit.log"))
	if !strings.Contains(string(b), `"event":"enable"`) {
		t.Fatalf("no audit record of the re-enable:\n%s", b)
	}
}

// TestRevocationDelayMeasured: an entry passing its expires is revoked at
// once (open streams lose it), and nodeward_revocation_delay_seconds says
// how late: the time-to-revoke signal of the SLO pack.
func TestRevocationDelayMeasured(t *testing.T) {
	dir := testutil.SocketDir(t)
	admin := "127.0.0.1:" + testutil.FreePort(t)
	expires := time.Now().Add(3 * time.Second).UTC().Truncate(time.Second).Add(time.Second)
	entries := fmt.Sprintf(`admin_listen: %s
entries:
  - spiffe_id: spiffe://example.org/short-lived
    selectors: [unix:uid:%d, "unix:path:%s"]
    expires: %s
`, admin, os.Geteuid(), bin, expires.Format(time.RFC3339))
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", entries)
	testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 10*time.Second)
	if _, errOut, code := testutil.Run(t, bin, nil, "fetch", "x509", "--socket", sock); code != 0 {
		t.Fatalf("before expiry: %s", errOut)
	}
	const count = `nodeward_revocation_delay_seconds_count{reason="expired"}`
	deadline := time.Now().Add(time.Until(expires) + 40*time.Second)
	for scrape(t, admin, count) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the expired entry was never revoked")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if d := scrape(t, admin, `nodeward_revocation_delay_seconds_sum{reason="expired"}`); d < 0 || d > 5 {
		t.Fatalf("revoked %.3fs after expiry, want within 5s", d)
	}
	if _, errOut, code := testutil.Run(t, bin, nil, "fetch", "x509", "--socket", sock); code == 0 || !strings.Contains(errOut, "PermissionDenied") {
		t.Fatalf("after expiry: exit %d %s", code, errOut)
	}
}
