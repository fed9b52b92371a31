package policy

import (
	"fmt"
	"sync"

	"github.com/nodeward/nodeward/attestors/selector"
)

// Index matches selector sets to entries. It is immutable and safe for
// concurrent use; build it with NewIndex.
//
// Every distinct selector of the entries gets a small integer id. Each entry
// is filed under its anchor: the one of its selectors that the fewest
// entries share. A caller can only match an entry whose anchor it has, so
// Match visits just the entries anchored on the caller's selectors and
// checks their other selectors against the caller's set, marked in a pooled
// per-selector array. A selector shared by every entry (a common group, say)
// never becomes an anchor while a rarer one exists, so a match costs
// O(caller selectors + candidate entries), not O(entries).
type Index struct {
	entries []*Entry
	sels    [][]int32        // selector ids per entry
	ids     map[string]int32 // selector string -> id
	anchors [][]int32        // selector id -> positions of the entries anchored on it, ascending
	uses    map[typeKey]struct{}
	pool    sync.Pool // *scratch sized for this index
}

// typeKey is a selector's type and key, for Uses.
type typeKey struct{ typ, key string }

// Empty is the deny-all index.
var Empty = &Index{ids: map[string]int32{}, uses: map[typeKey]struct{}{}}

// NewIndex validates entries and builds the index. Each entry must have a
// SPIFFE ID and at least one valid selector; its selectors are replaced by a
// sorted copy without duplicates, and an empty ID is filled with EntryID.
// Entry IDs must be unique. Entries must not be modified afterwards. On
// error no entry is modified.
func NewIndex(entries []*Entry) (*Index, error) {
	norm := make([][]selector.Selector, len(entries))
	ids := make([]string, len(entries))
	seen := make(map[string]int, len(entries))
	for i, e := range entries {
		if e == nil {
			return nil, fmt.Errorf("entry %d: %w", i, ErrNilEntry)
		}
		if e.SPIFFEID.IsZero() {
			return nil, fmt.Errorf("entry %d%s: %w", i, at(e), ErrNoSPIFFEID)
		}
		if len(e.Selectors) == 0 {
			return nil, fmt.Errorf("entry %d%s (%s): %w", i, at(e), e.SPIFFEID, ErrNoSelectors)
		}
		for _, s := range e.Selectors {
			if p, err := selector.Parse(s.String()); err != nil || p != s {
				return nil, fmt.Errorf("entry %d%s (%s): %w: %q", i, at(e), e.SPIFFEID, ErrBadSelector, s.String())
			}
		}
		norm[i] = normalize(e.Selectors)
		ids[i] = e.ID
		if ids[i] == "" {
			ids[i] = EntryID(e)
		}
		if j, dup := seen[ids[i]]; dup {
			return nil, fmt.Errorf("entry %d%s (%s): %w %q (also entry %d)", i, at(e), e.SPIFFEID, ErrDuplicateID, ids[i], j)
		}
		seen[ids[i]] = i
	}
	for i, e := range entries {
		e.Selectors, e.ID = norm[i], ids[i]
	}
	return build(append([]*Entry(nil), entries...)), nil
}

// at renders an entry's position for error messages.
func at(e *Entry) string {
	if e.Pos == "" {
		return ""
	}
	return " at " + e.Pos
}

// build indexes validated, normalized entries.
func build(entries []*Entry) *Index {
	ix := &Index{
		entries: entries,
		sels:    make([][]int32, len(entries)),
		ids:     make(map[string]int32),
		uses:    make(map[typeKey]struct{}),
	}
	var freq []int
	for i, e := range entries {
		ix.sels[i] = make([]int32, len(e.Selectors))
		for j, s := range e.Selectors {
			k := s.String()
			id, ok := ix.ids[k]
			if !ok {
				id = int32(len(freq))
				ix.ids[k] = id
				freq = append(freq, 0)
			}
			freq[id]++
			ix.sels[i][j] = id
			ix.uses[typeKey{s.Type, s.Key}] = struct{}{}
		}
	}
	ix.anchors = make([][]int32, len(freq))
	for pos, sels := range ix.sels {
		anchor := sels[0]
		for _, id := range sels[1:] {
			if freq[id] < freq[anchor] {
				anchor = id
			}
		}
		ix.anchors[anchor] = append(ix.anchors[anchor], int32(pos))
	}
	n := len(freq)
	ix.pool.New = func() any { return &scratch{mark: make([]uint32, n)} }
	return ix
}

// Entries returns the entries in configuration order. The caller must not
// modify the slice or the entries.
func (ix *Index) Entries() []*Entry { return ix.entries }

// Len returns the number of entries.
func (ix *Index) Len() int { return len(ix.entries) }

// Uses reports whether any entry has a selector of this type and key (for
// example "unix", "sha256"), so that costly facts are only gathered when
// some entry can use them.
func (ix *Index) Uses(typ, key string) bool {
	_, ok := ix.uses[typeKey{typ, key}]
	return ok
}
