// Package policy holds registration entries and the index that matches a
// caller's selectors against them.
//
// Security: matching is deny by default. An entry applies only when every
// one of its selectors is among the caller's; an entry without selectors is
// refused at load time, since it would grant its identity to everyone.
package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodeward/nodeward/attestors/selector"
)

// Sentinel errors of NewIndex.
var (
	ErrNoSelectors = errors.New("entry has no selectors")
	ErrNoSPIFFEID  = errors.New("entry has no SPIFFE ID")
	ErrDuplicateID = errors.New("duplicate entry id")
)

// Entry is one registration entry: workloads whose selectors include all of
// Selectors get SPIFFEID.
type Entry struct {
	ID        string // stable id: explicit, or derived by EntryID
	SPIFFEID  spiffeid.ID
	Selectors []selector.Selector // deduplicated and sorted by NewIndex
	X509TTL   time.Duration
	JWTTTL    time.Duration
	DNSNames  []string
	Hint      string
	Owner     string
	ExpiresAt time.Time // zero: never
	// Pos is where the entry was configured ("file:line"), for messages.
	Pos string
}

// Expired reports whether the entry has passed its expiry at now.
func (e *Entry) Expired(now time.Time) bool {
	return !e.ExpiresAt.IsZero() && !now.Before(e.ExpiresAt)
}

// EntryID derives a stable id from the SPIFFE ID and the sorted selectors.
func EntryID(e *Entry) string {
	sels := selector.Strings(selector.Sort(slices.Clone(e.Selectors)))
	sum := sha256.Sum256([]byte(e.SPIFFEID.String() + "\n" + strings.Join(sels, "\n")))
	return hex.EncodeToString(sum[:8])
}

// Index matches selector sets to entries. It is immutable and safe for
// concurrent use.
//
// Each entry is filed under its anchor: the one of its selectors that the
// fewest entries share. A caller can only match an entry whose anchor it
// has, so Match looks at the entries anchored on the caller's selectors and
// checks their remaining selectors against the caller's set. A selector
// shared by every entry (a common group, say) never becomes an anchor while
// a rarer one exists, which keeps matching fast with 10,000 entries.
type Index struct {
	entries []*Entry
	keys    [][]string         // selector strings per entry, sorted
	anchors map[string][]int32 // anchor selector -> entry positions, in order
	uses    map[string]bool
}

// Empty is the deny-all index.
var Empty = &Index{anchors: map[string][]int32{}, uses: map[string]bool{}}

// NewIndex validates entries and builds the index. Entries must not be
// modified afterwards.
func NewIndex(entries []*Entry) (*Index, error) {
	ix := &Index{
		entries: entries,
		keys:    make([][]string, len(entries)),
		anchors: make(map[string][]int32),
		uses:    make(map[string]bool),
	}
	ids := make(map[string]int, len(entries))
	freq := make(map[string]int)
	for i, e := range entries {
		if e.SPIFFEID.IsZero() {
			return nil, fmt.Errorf("entry %d: %w", i, ErrNoSPIFFEID)
		}
		e.Selectors = slices.CompactFunc(selector.Sort(e.Selectors), func(a, b selector.Selector) bool { return a == b })
		if len(e.Selectors) == 0 {
			return nil, fmt.Errorf("entry %d (%s): %w", i, e.SPIFFEID, ErrNoSelectors)
		}
		if e.ID == "" {
			e.ID = EntryID(e)
		}
		if j, dup := ids[e.ID]; dup {
			return nil, fmt.Errorf("entry %d (%s): %w %q (also entry %d)", i, e.SPIFFEID, ErrDuplicateID, e.ID, j)
		}
		ids[e.ID] = i
		ix.keys[i] = selector.Strings(e.Selectors)
		for _, s := range e.Selectors {
			freq[s.String()]++
			ix.uses[s.Type+":"+s.Key] = true
		}
	}
	for i, keys := range ix.keys {
		anchor := keys[0]
		for _, k := range keys[1:] {
			if freq[k] < freq[anchor] {
				anchor = k
			}
		}
		ix.anchors[anchor] = append(ix.anchors[anchor], int32(i))
	}
	return ix, nil
}

// Match returns the entries whose selectors are all in sels, in entry order,
// or nil when none match.
func (ix *Index) Match(sels []selector.Selector) []*Entry {
	if len(ix.entries) == 0 || len(sels) == 0 {
		return nil
	}
	have := make(map[string]struct{}, len(sels))
	var buf [256]byte
	for _, s := range sels {
		have[string(appendSelector(buf[:0], s))] = struct{}{}
	}
	var matched []int32
	for k := range have {
	candidates:
		for _, pos := range ix.anchors[k] {
			for _, need := range ix.keys[pos] {
				if _, ok := have[need]; !ok {
					continue candidates
				}
			}
			matched = append(matched, pos)
		}
	}
	if len(matched) == 0 {
		return nil
	}
	slices.Sort(matched)
	out := make([]*Entry, len(matched))
	for i, pos := range matched {
		out[i] = ix.entries[pos]
	}
	return out
}

func appendSelector(b []byte, s selector.Selector) []byte {
	b = append(b, s.Type...)
	b = append(b, ':')
	b = append(b, s.Key...)
	b = append(b, ':')
	return append(b, s.Value...)
}

// Entries returns the entries in configuration order.
func (ix *Index) Entries() []*Entry { return ix.entries }

// Len returns the number of entries.
func (ix *Index) Len() int { return len(ix.entries) }

// Uses reports whether any entry has a selector of this type and key (for
// example "unix", "sha256"), so that costly facts are only gathered when
// some entry can use them.
func (ix *Index) Uses(typ, key string) bool { return ix.uses[typ+":"+key] }
