package inventory

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// clock is a test clock the inventory reads through Options.Now.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *clock) now() time.Time      { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) add(d time.Duration) { c.ns.Add(int64(d)) }
func entry(id, sid string, sels ...string) Entry {
	return Entry{ID: id, SPIFFEID: sid, Selectors: sels, Owner: "team-a"}
}

func open(t *testing.T, path string, c *clock, opts Options) *Inventory {
	t.Helper()
	opts.Now = c.now
	inv, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	return inv
}

func find(t *testing.T, inv *Inventory, id string) Record {
	t.Helper()
	for _, r := range inv.Snapshot() {
		if r.EntryID == id {
			return r
		}
	}
	t.Fatalf("no record for %s", id)
	return Record{}
}

func TestPolicyLifecycle(t *testing.T) {
	c := newClock()
	inv := open(t, filepath.Join(t.TempDir(), "inventory.json"), c, Options{Retention: time.Hour})
	t0 := c.now()
	inv.SyncPolicy([]Entry{entry("a", "spiffe://td/a", "unix:uid:1"), entry("b", "spiffe://td/b", "unix:uid:2")})
	c.add(time.Minute)
	inv.SyncPolicy([]Entry{entry("a", "spiffe://td/a", "unix:uid:1"), entry("b", "spiffe://td/b", "unix:uid:2", "unix:gid:2")})
	a, b := find(t, inv, "a"), find(t, inv, "b")
	if !a.Created.Equal(t0) || !a.Changed.Equal(t0) {
		t.Errorf("unchanged entry a: created %v changed %v, want both %v", a.Created, a.Changed, t0)
	}
	if !b.Created.Equal(t0) || !b.Changed.Equal(t0.Add(time.Minute)) || len(b.Selectors) != 2 {
		t.Errorf("changed entry b: %+v", b)
	}
	c.add(time.Minute)
	inv.SyncPolicy([]Entry{entry("a", "spiffe://td/a", "unix:uid:1")})
	if b := find(t, inv, "b"); !b.Removed.Equal(c.now()) {
		t.Errorf("removed entry b: Removed %v, want %v", b.Removed, c.now())
	}
	c.add(2 * time.Hour)
	inv.SyncPolicy([]Entry{entry("a", "spiffe://td/a", "unix:uid:1")})
	if n := len(inv.Snapshot()); n != 1 {
		t.Errorf("after retention: %d records, want 1 (b dropped)", n)
	}
}

func TestIssuedAndStale(t *testing.T) {
	c := newClock()
	inv := open(t, filepath.Join(t.TempDir(), "inventory.json"), c, Options{StaleAfter: 24 * time.Hour})
	inv.SyncPolicy([]Entry{entry("a", "spiffe://td/a"), entry("b", "spiffe://td/b")})
	c.add(time.Hour)
	first := c.now()
	inv.Issued("a", X509, &Caller{PID: 10, UID: 1000, Binary: "/usr/bin/app", SystemdUnit: "app.service"})
	c.add(time.Hour)
	inv.Issued("a", JWT, &Caller{PID: 11, UID: 1000, Binary: "/usr/bin/app"})
	inv.Issued("a", Token, nil)
	inv.Issued("unknown", X509, nil) // ignored
	a := find(t, inv, "a")
	if a.X509Issued != 1 || a.JWTIssued != 1 || a.TokensIssued != 1 {
		t.Errorf("counts: %+v", a)
	}
	if !a.FirstIssued.Equal(first) || !a.LastIssued.Equal(c.now()) || a.LastCaller == nil || a.LastCaller.PID != 11 {
		t.Errorf("first/last: %+v caller %+v", a, a.LastCaller)
	}
	if inv.StaleCount() != 0 {
		t.Errorf("stale too early")
	}
	c.add(23 * time.Hour) // b: created 25h ago, never used; a: used 23h ago
	if find(t, inv, "a").Stale || !find(t, inv, "b").Stale || inv.StaleCount() != 1 {
		t.Errorf("stale: a %v b %v count %d", find(t, inv, "a").Stale, find(t, inv, "b").Stale, inv.StaleCount())
	}
	if ids := inv.DisableStale(); len(ids) != 1 || ids[0] != "b" || !inv.Disabled("b") || inv.Disabled("a") {
		t.Fatalf("DisableStale: %v", ids)
	}
	if ids := inv.DisableStale(); len(ids) != 0 {
		t.Errorf("second DisableStale disabled %v again", ids)
	}
	if !inv.Enable("b") || inv.Disabled("b") || find(t, inv, "b").Stale {
		t.Errorf("Enable(b) left it disabled or stale")
	}
	if inv.Enable("nope") {
		t.Errorf("Enable of an unknown entry succeeded")
	}
}

func TestPersistence(t *testing.T) {
	c := newClock()
	path := filepath.Join(t.TempDir(), "inventory.json")
	inv := open(t, path, c, Options{})
	inv.SyncPolicy([]Entry{entry("a", "spiffe://td/a", "unix:uid:1")})
	inv.Issued("a", X509, &Caller{UID: 7})
	if err := inv.Flush(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("inventory file mode %v, want 0600", st.Mode().Perm())
	}
	again := open(t, path, c, Options{})
	got := find(t, again, "a")
	if got.X509Issued != 1 || got.LastCaller == nil || got.LastCaller.UID != 7 || got.Owner != "team-a" {
		t.Errorf("reloaded record: %+v", got)
	}
}

func TestRunFlushesAndStops(t *testing.T) {
	c := newClock()
	path := filepath.Join(t.TempDir(), "inventory.json")
	inv := open(t, path, c, Options{FlushInterval: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { inv.Run(ctx); close(done) }()
	inv.SyncPolicy([]Entry{entry("a", "spiffe://td/a")})
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run never flushed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	inv.Issued("a", JWT, nil)
	cancel()
	<-done
	if got := find(t, open(t, path, c, Options{}), "a"); got.JWTIssued != 1 {
		t.Errorf("the update before shutdown was not flushed: %+v", got)
	}
}

func TestCorruptFileMovedAside(t *testing.T) {
	c := newClock()
	path := filepath.Join(t.TempDir(), "inventory.json")
	if err := os.WriteFile(path, []byte(`{"version":1,"records":[{`), 0o600); err != nil {
		t.Fatal(err)
	}
	inv := open(t, path, c, Options{})
	if n := len(inv.Snapshot()); n != 0 {
		t.Errorf("%d records from a corrupt file", n)
	}
	if _, err := os.Stat(path + ".corrupt"); err != nil {
		t.Errorf("corrupt file not kept for inspection: %v", err)
	}
}

func TestFlushFailureKeepsUpdates(t *testing.T) {
	c := newClock()
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "inventory.json") // directory missing: writes fail
	inv := open(t, path, c, Options{})
	inv.SyncPolicy([]Entry{entry("a", "spiffe://td/a")})
	if err := inv.Flush(); err == nil {
		t.Fatal("flush into a missing directory succeeded")
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := inv.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := find(t, open(t, path, c, Options{}), "a"); got.SPIFFEID != "spiffe://td/a" {
		t.Errorf("record lost after a failed flush: %+v", got)
	}
}

func TestBounded(t *testing.T) {
	c := newClock()
	inv := open(t, filepath.Join(t.TempDir(), "inventory.json"), c, Options{MaxRecords: 3})
	inv.SyncPolicy([]Entry{entry("a", "x"), entry("b", "x")})
	c.add(time.Minute)
	inv.SyncPolicy([]Entry{entry("c", "x")}) // a and b removed
	c.add(time.Minute)
	inv.SyncPolicy([]Entry{entry("c", "x"), entry("d", "x"), entry("e", "x"), entry("f", "x")})
	snap := inv.Snapshot()
	if len(snap) > 3 {
		t.Fatalf("%d records, bound is 3", len(snap))
	}
	ids := map[string]bool{}
	for _, r := range snap {
		ids[r.EntryID] = true
	}
	if !ids["c"] || !ids["d"] || !ids["e"] {
		t.Errorf("records kept %v: removed ones must go first, then new entries are not tracked", ids)
	}
}

// TestConcurrentUse drives every method at once; run with -race.
func TestConcurrentUse(t *testing.T) {
	c := newClock()
	inv := open(t, filepath.Join(t.TempDir(), "inventory.json"), c, Options{StaleAfter: time.Minute})
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				switch i % 6 {
				case 0:
					inv.SyncPolicy([]Entry{entry("a", "x"), entry(fmt.Sprint("g", g), "y")})
				case 1:
					inv.Issued("a", Kind(i%3), &Caller{UID: uint32(g)})
				case 2:
					_ = inv.Snapshot()
				case 3:
					_ = inv.Flush()
				case 4:
					inv.DisableStale()
					c.add(time.Second)
				case 5:
					inv.Enable("a")
				}
			}
		}(g)
	}
	wg.Wait()
	if err := inv.Flush(); err != nil {
		t.Fatal(err)
	}
	var f file
	b, err := os.ReadFile(inv.path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &f); err != nil || len(f.Records) == 0 {
		t.Fatalf("file after concurrent use: %v, %d records", err, len(f.Records))
	}
}
