package policy

import (
	"slices"

	"github.com/nodeward/nodeward/attestors/selector"
)

// maxPooledBuf bounds the selector-rendering buffer kept in the pool.
const maxPooledBuf = 4 << 10

// scratch is Match's per-call working memory, pooled per Index.
type scratch struct {
	mark    []uint32 // selector id -> gen when the caller has that selector
	gen     uint32
	have    []int32 // the caller's distinct selector ids known to the index
	matched []int32 // positions of matched entries
	buf     []byte
}

// Match returns the entries whose selectors are all in sels, in entry
// order, or nil when none match. Duplicates in sels do not matter. The
// result is a fresh slice; the entries are shared and must not be modified.
func (ix *Index) Match(sels []selector.Selector) []*Entry {
	if len(ix.entries) == 0 || len(sels) == 0 {
		return nil
	}
	sc := ix.pool.Get().(*scratch)
	defer ix.release(sc)
	sc.gen++
	if sc.gen == 0 { // wrapped: stale marks could collide
		clear(sc.mark)
		sc.gen = 1
	}
	gen, mark := sc.gen, sc.mark
	have := sc.have[:0]
	for _, s := range sels {
		sc.buf = appendSelector(sc.buf[:0], s)
		id, ok := ix.ids[string(sc.buf)] // no allocation: map lookup by converted []byte
		if !ok || mark[id] == gen {
			continue // no entry uses it, or a duplicate
		}
		mark[id] = gen
		have = append(have, id)
	}
	matched := sc.matched[:0]
	for _, id := range have {
	candidates:
		for _, pos := range ix.anchors[id] {
			for _, need := range ix.sels[pos] {
				if mark[need] != gen {
					continue candidates
				}
			}
			matched = append(matched, pos)
		}
	}
	sc.have, sc.matched = have, matched
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

func (ix *Index) release(sc *scratch) {
	if cap(sc.buf) > maxPooledBuf {
		sc.buf = nil
	}
	ix.pool.Put(sc)
}

// appendSelector appends s.String() to b without allocating.
func appendSelector(b []byte, s selector.Selector) []byte {
	b = append(b, s.Type...)
	b = append(b, ':')
	b = append(b, s.Key...)
	b = append(b, ':')
	return append(b, s.Value...)
}
