package identity

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodeward/nodeward/agent/ca"
	"github.com/nodeward/nodeward/agent/policy"
	"github.com/nodeward/nodeward/attestors/selector"
)

func byLen(k string, v []byte) int64 { return int64(len(k) + len(v)) }

func TestSizedCacheBoundsBytes(t *testing.T) {
	c := newSizedCache(100, 100, byLen)
	for i := range 10 {
		c.Add(fmt.Sprintf("k%d", i), make([]byte, 28)) // 30 bytes each
	}
	if c.Bytes() > 100 || c.Len() != 3 {
		t.Fatalf("bytes %d, len %d; want at most 100 bytes, 3 entries", c.Bytes(), c.Len())
	}
	if _, ok := c.Get("k9"); !ok {
		t.Error("newest entry evicted")
	}
	if _, ok := c.Get("k0"); ok {
		t.Error("oldest entry kept")
	}
	if c.Add("big", make([]byte, 200)) {
		t.Error("an entry larger than the budget was cached")
	}
	if _, ok := c.Get("k9"); !ok || c.Len() != 3 {
		t.Error("an oversized entry evicted others")
	}
}

func TestSizedCacheLRUAndEntries(t *testing.T) {
	c := newSizedCache(2, 1<<20, byLen)
	c.Add("a", nil)
	c.Add("b", nil)
	c.Get("a") // a is now more recent than b
	c.Add("c", nil)
	if _, ok := c.Get("b"); ok {
		t.Error("least recently used entry kept")
	}
	if got := strings.Join(c.Keys(), ","); got != "a,c" {
		t.Errorf("keys = %s, want a,c", got)
	}
	c.Add("a", []byte("xx")) // replace: bytes follow the new value
	if c.Bytes() != 1+2+1 {
		t.Errorf("bytes = %d, want 4", c.Bytes())
	}
	c.Remove("a")
	c.Remove("c")
	if c.Bytes() != 0 || c.Len() != 0 {
		t.Errorf("after removing all: bytes %d len %d", c.Bytes(), c.Len())
	}
}

func TestSizedCacheConcurrent(t *testing.T) {
	c := newSizedCache(1000, 4096, byLen)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				k := fmt.Sprintf("%d-%d", g, i%50)
				c.Add(k, make([]byte, i%64))
				c.Get(k)
				if i%7 == 0 {
					c.Remove(k)
				}
				_ = c.Keys()
			}
		})
	}
	wg.Wait()
	if c.Bytes() > 4096 {
		t.Fatalf("bytes %d over the bound", c.Bytes())
	}
}

// A caller asking for JWT-SVIDs with 32 distinct 1 KiB audiences each time
// (issue 11 item 3) fills the JWT-SVID cache by bytes, not by count.
func TestJWTCacheBoundedByBytes(t *testing.T) {
	c, err := ca.LoadOrCreate(ca.Config{TrustDomain: td, Dir: t.TempDir() + "/ca"})
	if err != nil {
		t.Fatal(err)
	}
	ix, err := policy.NewIndex([]*policy.Entry{entry("/a", "unix:uid:1", time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	const budget = 1 << 20
	s, err := New(Config{CA: c, Index: ix, JWTCacheBytes: budget})
	if err != nil {
		t.Fatal(err)
	}
	es, _ := s.Match([]selector.Selector{selector.MustParse("unix:uid:1")})
	for i := range 200 {
		aud := make([]string, 32)
		for j := range aud {
			aud[j] = fmt.Sprintf("%04d-%02d-%s", i, j, strings.Repeat("a", 1000))
		}
		if _, err := s.JWTSVIDs(es, spiffeid.ID{}, aud); err != nil {
			t.Fatal(err)
		}
	}
	if b := s.jwt.Bytes(); b > budget {
		t.Fatalf("JWT cache holds %d bytes, bound %d", b, budget)
	}
	if n := s.Stats().JWTSVIDs; n == 0 || n >= 200 {
		t.Fatalf("cached %d JWT-SVIDs; want some, far fewer than 200", n)
	}
}
