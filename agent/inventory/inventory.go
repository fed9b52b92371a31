// Package inventory keeps the identity inventory of issue 14: for every
// registration entry the agent has had in its policy, what it is (SPIFFE ID,
// selectors, owner), when it was first seen and last changed, when it
// expires, when it was first and last issued, by whom it was last used, how
// often it was issued (X.509-SVIDs, JWT-SVIDs, broker tokens), and whether it
// is stale (unused for stale_after) or disabled.
//
// The inventory is persisted as one JSON file in data_dir, replaced
// atomically (temp file, fsync, rename) at most once per flush interval, so a
// crash (kill -9) loses at most the last interval's updates and never leaves
// a half-written file. Its size is bounded: entries that left the policy are
// kept for Options.Retention and at most Options.MaxRecords records are held.
//
// The issue path (Issued) takes one mutex and updates a map entry; it never
// touches the disk.
package inventory

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/nodeward/nodeward/internal/atomicfile"
)

// Kind is what was issued for an entry.
type Kind int

// Kinds of issuance counted per entry.
const (
	X509 Kind = iota
	JWT
	Token // an access token the broker obtained with this entry's SVID
)

// Entry is a registration entry as the policy has it now.
type Entry struct {
	ID        string
	SPIFFEID  string
	Selectors []string
	Owner     string
	ExpiresAt time.Time // zero: never
}

// Caller is who was last issued an entry's identity.
type Caller struct {
	PID         int32  `json:"pid,omitempty"`
	UID         uint32 `json:"uid"`
	Binary      string `json:"binary,omitempty"`
	SystemdUnit string `json:"systemd_unit,omitempty"`
	ContainerID string `json:"container_id,omitempty"`
	PodUID      string `json:"pod_uid,omitempty"`
}

// Record is the inventory's line for one entry.
type Record struct {
	EntryID      string    `json:"entry_id"`
	SPIFFEID     string    `json:"spiffe_id"`
	Selectors    []string  `json:"selectors"`
	Owner        string    `json:"owner,omitempty"`
	Created      time.Time `json:"created"`          // first seen in the policy
	Changed      time.Time `json:"changed"`          // last time its definition changed
	Removed      time.Time `json:"removed,omitzero"` // left the policy (kept for Retention)
	ExpiresAt    time.Time `json:"expires,omitzero"` // the entry's own expiry
	FirstIssued  time.Time `json:"first_issued,omitzero"`
	LastIssued   time.Time `json:"last_issued,omitzero"`
	LastCaller   *Caller   `json:"last_caller,omitempty"`
	X509Issued   uint64    `json:"x509_issued"`
	JWTIssued    uint64    `json:"jwt_issued"`
	TokensIssued uint64    `json:"tokens_issued"`
	// Disabled is set when the entry was stale and disable_stale is on; it
	// stays set until an operator re-enables the entry.
	Disabled   bool      `json:"disabled,omitempty"`
	DisabledAt time.Time `json:"disabled_at,omitzero"`
	// Stale is computed on read: in the policy and not issued (or, never
	// issued, not created) within StaleAfter.
	Stale bool `json:"stale"`
}

// lastUse is when the entry was last issued, or created if never.
func (r *Record) lastUse() time.Time {
	if !r.LastIssued.IsZero() {
		return r.LastIssued
	}
	return r.Created
}

// Options configure an Inventory.
type Options struct {
	// StaleAfter: an entry in the policy unused this long is stale (0: never).
	StaleAfter time.Duration
	// FlushInterval bounds what a crash loses (default 1s).
	FlushInterval time.Duration
	// Retention keeps records of entries that left the policy (default 30d).
	Retention time.Duration
	// MaxRecords bounds the records held (default 10000); when full, the
	// longest-removed records go first, then new entries are not tracked.
	MaxRecords int
	Logger     *slog.Logger
	// Now is the clock (default time.Now); tests drive it.
	Now func() time.Time
}

// file is the persisted form.
type file struct {
	Version int       `json:"version"`
	Records []*Record `json:"records"`
}

const fileVersion = 1

// Inventory is safe for concurrent use.
type Inventory struct {
	path string
	opts Options

	mu      sync.Mutex
	records map[string]*Record
	dirty   bool
	// flushMu serializes writers of the file.
	flushMu sync.Mutex
}

// Open loads the inventory at path (a missing file is an empty inventory).
// A file that does not parse is moved aside to path+".corrupt" (a warning is
// logged) and the inventory starts empty: the inventory is a record, not
// policy, and must never keep the agent from starting.
func Open(path string, opts Options) (*Inventory, error) {
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = time.Second
	}
	if opts.Retention <= 0 {
		opts.Retention = 30 * 24 * time.Hour
	}
	if opts.MaxRecords <= 0 {
		opts.MaxRecords = 10000
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	inv := &Inventory{path: path, opts: opts, records: map[string]*Record{}}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return inv, nil
	case err != nil:
		return nil, fmt.Errorf("inventory: read %s: %w", path, err)
	}
	var f file
	if err := json.Unmarshal(b, &f); err != nil || f.Version != fileVersion {
		if err == nil {
			err = fmt.Errorf("version %d, want %d", f.Version, fileVersion)
		}
		opts.Logger.Warn("inventory file unreadable; starting a new one", "path", path, "err", err, "moved_to", path+".corrupt")
		if rerr := os.Rename(path, path+".corrupt"); rerr != nil {
			return nil, fmt.Errorf("inventory: move aside unreadable %s: %w", path, rerr)
		}
		return inv, nil
	}
	for _, r := range f.Records {
		if r == nil || r.EntryID == "" || len(inv.records) >= opts.MaxRecords {
			continue
		}
		inv.records[r.EntryID] = r
	}
	return inv, nil
}

func now(clock func() time.Time) time.Time { return clock().Round(0).UTC() }

// SyncPolicy records the policy's entries: new ones are created, changed
// ones get Changed, entries no longer present get Removed (and come back to
// life if they return). Records removed longer than Retention ago are
// dropped.
func (inv *Inventory) SyncPolicy(entries []Entry) {
	t := now(inv.opts.Now)
	inv.mu.Lock()
	defer inv.mu.Unlock()
	present := make(map[string]bool, len(entries))
	for _, e := range entries {
		present[e.ID] = true
		sels := append([]string(nil), e.Selectors...)
		sort.Strings(sels)
		r, ok := inv.records[e.ID]
		if !ok {
			if len(inv.records) >= inv.opts.MaxRecords && !inv.evictRemovedLocked() {
				inv.opts.Logger.Warn("inventory full; entry not tracked", "entry_id", e.ID, "max_records", inv.opts.MaxRecords)
				continue
			}
			inv.records[e.ID] = &Record{EntryID: e.ID, SPIFFEID: e.SPIFFEID, Selectors: sels, Owner: e.Owner,
				Created: t, Changed: t, ExpiresAt: e.ExpiresAt.UTC()}
			inv.dirty = true
			continue
		}
		if !r.Removed.IsZero() {
			r.Removed, r.Changed = time.Time{}, t
			inv.dirty = true
		}
		if r.SPIFFEID != e.SPIFFEID || r.Owner != e.Owner || !r.ExpiresAt.Equal(e.ExpiresAt) || !equal(r.Selectors, sels) {
			r.SPIFFEID, r.Owner, r.ExpiresAt, r.Selectors, r.Changed = e.SPIFFEID, e.Owner, e.ExpiresAt.UTC(), sels, t
			inv.dirty = true
		}
	}
	for id, r := range inv.records {
		switch {
		case !present[id] && r.Removed.IsZero():
			r.Removed = t
			inv.dirty = true
		case !r.Removed.IsZero() && t.Sub(r.Removed) > inv.opts.Retention:
			delete(inv.records, id)
			inv.dirty = true
		}
	}
}

// evictRemovedLocked drops the record removed longest ago; false when every
// record is still in the policy.
func (inv *Inventory) evictRemovedLocked() bool {
	var oldest *Record
	for _, r := range inv.records {
		if !r.Removed.IsZero() && (oldest == nil || r.Removed.Before(oldest.Removed)) {
			oldest = r
		}
	}
	if oldest == nil {
		return false
	}
	delete(inv.records, oldest.EntryID)
	return true
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Issued counts one issuance of kind for entryID to caller (nil: unknown).
// Unknown entry ids are ignored.
func (inv *Inventory) Issued(entryID string, kind Kind, caller *Caller) {
	t := now(inv.opts.Now)
	inv.mu.Lock()
	defer inv.mu.Unlock()
	r, ok := inv.records[entryID]
	if !ok {
		return
	}
	if r.FirstIssued.IsZero() {
		r.FirstIssued = t
	}
	r.LastIssued = t
	if caller != nil {
		c := *caller
		r.LastCaller = &c
	}
	switch kind {
	case X509:
		r.X509Issued++
	case JWT:
		r.JWTIssued++
	case Token:
		r.TokensIssued++
	}
	inv.dirty = true
}

// SetStaleAfter changes the staleness threshold (a reload).
func (inv *Inventory) SetStaleAfter(d time.Duration) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.opts.StaleAfter = d
}

// staleLocked reports whether r is stale at t.
func (inv *Inventory) staleLocked(r *Record, t time.Time) bool {
	return inv.opts.StaleAfter > 0 && r.Removed.IsZero() && t.Sub(r.lastUse()) > inv.opts.StaleAfter
}

// Snapshot returns copies of all records, sorted by SPIFFE ID then entry id,
// with Stale computed now.
func (inv *Inventory) Snapshot() []Record {
	t := now(inv.opts.Now)
	inv.mu.Lock()
	out := make([]Record, 0, len(inv.records))
	for _, r := range inv.records {
		c := *r
		c.Selectors = append([]string(nil), r.Selectors...)
		if r.LastCaller != nil {
			lc := *r.LastCaller
			c.LastCaller = &lc
		}
		c.Stale = inv.staleLocked(r, t)
		out = append(out, c)
	}
	inv.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].SPIFFEID != out[j].SPIFFEID {
			return out[i].SPIFFEID < out[j].SPIFFEID
		}
		return out[i].EntryID < out[j].EntryID
	})
	return out
}

// Record returns a copy of entryID's record.
func (inv *Inventory) Record(entryID string) (Record, bool) {
	t := now(inv.opts.Now)
	inv.mu.Lock()
	defer inv.mu.Unlock()
	r, ok := inv.records[entryID]
	if !ok {
		return Record{}, false
	}
	c := *r
	c.Selectors = append([]string(nil), r.Selectors...)
	c.Stale = inv.staleLocked(r, t)
	return c, true
}

// StaleCount is the number of stale entries in the policy now.
func (inv *Inventory) StaleCount() int {
	t := now(inv.opts.Now)
	inv.mu.Lock()
	defer inv.mu.Unlock()
	n := 0
	for _, r := range inv.records {
		if inv.staleLocked(r, t) {
			n++
		}
	}
	return n
}

// DisableStale marks every stale entry disabled and returns the ids newly
// disabled (the caller audits them and stops issuing).
func (inv *Inventory) DisableStale() []string {
	t := now(inv.opts.Now)
	inv.mu.Lock()
	defer inv.mu.Unlock()
	var ids []string
	for id, r := range inv.records {
		if !r.Disabled && inv.staleLocked(r, t) {
			r.Disabled, r.DisabledAt = true, t
			ids = append(ids, id)
			inv.dirty = true
		}
	}
	sort.Strings(ids)
	return ids
}

// Disabled reports whether entryID is disabled.
func (inv *Inventory) Disabled(entryID string) bool {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	r, ok := inv.records[entryID]
	return ok && r.Disabled
}

// Enable re-enables a disabled entry (an operator's explicit act); its last
// use becomes now so it is not immediately stale again. False when the
// entry is unknown.
func (inv *Inventory) Enable(entryID string) bool {
	t := now(inv.opts.Now)
	inv.mu.Lock()
	defer inv.mu.Unlock()
	r, ok := inv.records[entryID]
	if !ok {
		return false
	}
	r.Disabled, r.DisabledAt = false, time.Time{}
	if r.lastUse().Before(t) {
		r.LastIssued = t
	}
	inv.dirty = true
	return true
}

// Flush writes the inventory if it changed since the last write.
func (inv *Inventory) Flush() error {
	inv.flushMu.Lock()
	defer inv.flushMu.Unlock()
	inv.mu.Lock()
	if !inv.dirty {
		inv.mu.Unlock()
		return nil
	}
	f := file{Version: fileVersion, Records: make([]*Record, 0, len(inv.records))}
	for _, r := range inv.records {
		c := *r
		c.Stale = false // computed on read, not stored
		f.Records = append(f.Records, &c)
	}
	inv.dirty = false
	inv.mu.Unlock()
	sort.Slice(f.Records, func(i, j int) bool { return f.Records[i].EntryID < f.Records[j].EntryID })
	b, err := json.Marshal(&f)
	if err == nil {
		err = atomicfile.Write(inv.path, append(b, '\n'), 0o600)
	}
	if err != nil {
		inv.mu.Lock()
		inv.dirty = true // try again next interval
		inv.mu.Unlock()
		return fmt.Errorf("inventory: write %s: %w", inv.path, err)
	}
	return nil
}

// Run flushes every FlushInterval until ctx ends, then flushes once more.
func (inv *Inventory) Run(ctx context.Context) {
	tick := time.NewTicker(inv.opts.FlushInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := inv.Flush(); err != nil {
				inv.opts.Logger.Error("inventory flush at shutdown", "err", err)
			}
			return
		case <-tick.C:
			if err := inv.Flush(); err != nil {
				inv.opts.Logger.Error("inventory flush", "err", err)
			}
		}
	}
}
