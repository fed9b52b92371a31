package identity

import (
	"container/list"
	"sync"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
)

// sizedCache is an LRU cache bounded by the bytes its entries hold (as told
// by size) as well as by their number: a caller who picks large keys or
// values (1 KiB audiences, 16 KiB tokens) fills it by bytes long before it
// fills it by count. An entry larger than the whole budget is not cached.
// It is safe for concurrent use.
type sizedCache[K comparable, V any] struct {
	size       func(K, V) int64
	maxBytes   int64
	maxEntries int

	mu    sync.Mutex
	ll    *list.List // front: most recently used
	items map[K]*list.Element
	bytes int64
}

type sizedItem[K comparable, V any] struct {
	key  K
	val  V
	size int64
}

// newSizedCache returns a cache holding at most maxEntries entries and
// maxBytes bytes.
func newSizedCache[K comparable, V any](maxEntries int, maxBytes int64, size func(K, V) int64) *sizedCache[K, V] {
	return &sizedCache[K, V]{size: size, maxBytes: maxBytes, maxEntries: maxEntries,
		ll: list.New(), items: make(map[K]*list.Element)}
}

// Get returns the value of k and marks it recently used.
func (c *sizedCache[K, V]) Get(k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		c.ll.MoveToFront(el)
		return el.Value.(*sizedItem[K, V]).val, true
	}
	var zero V
	return zero, false
}

// Add caches v under k, evicting the least recently used entries until the
// bounds hold. It reports whether v was cached.
func (c *sizedCache[K, V]) Add(k K, v V) bool {
	n := c.size(k, v)
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		c.removeLocked(el)
	}
	if n > c.maxBytes {
		return false
	}
	c.items[k] = c.ll.PushFront(&sizedItem[K, V]{key: k, val: v, size: n})
	c.bytes += n
	for c.bytes > c.maxBytes || c.ll.Len() > c.maxEntries {
		c.removeLocked(c.ll.Back())
	}
	return true
}

// RemoveIf drops every entry for which drop returns true. drop runs under
// the cache's lock and must be quick.
func (c *sizedCache[K, V]) RemoveIf(drop func(K, V) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for el := c.ll.Back(); el != nil; {
		prev := el.Prev()
		if it := el.Value.(*sizedItem[K, V]); drop(it.key, it.val) {
			c.removeLocked(el)
		}
		el = prev
	}
}

// Remove drops k.
func (c *sizedCache[K, V]) Remove(k K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		c.removeLocked(el)
	}
}

func (c *sizedCache[K, V]) removeLocked(el *list.Element) {
	it := el.Value.(*sizedItem[K, V])
	c.ll.Remove(el)
	delete(c.items, it.key)
	c.bytes -= it.size
}

// Keys returns the keys, least recently used first.
func (c *sizedCache[K, V]) Keys() []K {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]K, 0, c.ll.Len())
	for el := c.ll.Back(); el != nil; el = el.Prev() {
		out = append(out, el.Value.(*sizedItem[K, V]).key)
	}
	return out
}

// Len returns the number of entries.
func (c *sizedCache[K, V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}

// Bytes returns the bytes the entries hold, as counted by size.
func (c *sizedCache[K, V]) Bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}

// entryOverhead approximates the bookkeeping of one cached entry (list
// element, map slot, item and value headers).
const entryOverhead = 256

// DefaultJWTCacheBytes is the default byte bound of each JWT-SVID cache.
const DefaultJWTCacheBytes = 4 << 20

// jwtSize is the bytes a minted JWT-SVID holds in the cache: its key (the
// audiences) and its token and strings.
func jwtSize(k jwtKey, j *JWTSVID) int64 {
	return int64(entryOverhead + len(k.id) + len(k.aud) + len(j.Token) + len(j.JTI) + len(j.EntryID) + len(j.Hint))
}

// validatedSVID is a JWT-SVID whose signature was verified, with the length
// of the token it was parsed from (its claims hold about as much).
type validatedSVID struct {
	svid *jwtsvid.SVID
	size int
}

func validatedSize(_ [32]byte, v *validatedSVID) int64 {
	return int64(entryOverhead + 32 + 2*v.size)
}
