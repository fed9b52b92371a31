package policy

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodeward/nodeward/attestors/selector"
)

func TestMatch(t *testing.T) {
	ix, err := NewIndex([]*Entry{
		e("/web", "unix:uid:1000", "unix:path:/usr/bin/web"),
		e("/any1000", "unix:uid:1000"),
		e("/unit", "unix:uid:1000", "systemd:unit:web.service"),
		e("/dup", "unix:gid:5", "unix:gid:5"),
		e("/three", "unix:gid:5", "systemd:unit:db.service", "container:runtime:docker"),
		e("/late", "unix:gid:5"),
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		in   []selector.Selector
		want string
	}{
		{"one selector entry", sels("unix:uid:1000"), "/any1000"},
		{"subset: extra caller selectors are fine", sels("unix:uid:1000", "unix:path:/usr/bin/web", "unix:gid:1"), "/web,/any1000"},
		{"selectors from two types", sels("systemd:unit:web.service", "unix:uid:1000"), "/any1000,/unit"},
		{"caller order does not matter", sels("unix:path:/usr/bin/web", "systemd:unit:web.service", "unix:uid:1000"), "/web,/any1000,/unit"},
		{"duplicates in caller selectors", sels("unix:uid:1000", "unix:uid:1000", "unix:path:/x", "unix:uid:1000"), "/any1000"},
		{"entry with a repeated selector", sels("unix:gid:5"), "/dup,/late"},
		{"three types, in entry order", sels("container:runtime:docker", "systemd:unit:db.service", "unix:gid:5"), "/dup,/three,/late"},
		{"missing one of three", sels("container:runtime:docker", "unix:gid:5"), "/dup,/late"},
		{"value differs", sels("unix:uid:10000"), ""},
		{"same value, other key", sels("unix:gid:1000"), ""},
		{"unknown selectors only", sels("k8s:pod-uid:abc", "node:hostname:h"), ""},
		{"empty caller", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ix.Match(tt.in)
			if paths(got) != tt.want {
				t.Errorf("got %q, want %q", paths(got), tt.want)
			}
			if tt.want == "" && got != nil {
				t.Error("no match must be nil")
			}
		})
	}
}

func TestMatchResultIsFresh(t *testing.T) {
	ix, err := NewIndex([]*Entry{e("/a", "unix:uid:1"), e("/b", "unix:uid:1")})
	if err != nil {
		t.Fatal(err)
	}
	first := ix.Match(sels("unix:uid:1"))
	first[0] = nil
	if got := paths(ix.Match(sels("unix:uid:1"))); got != "/a,/b" {
		t.Fatalf("modifying a result changed the next one: %q", got)
	}
}

func TestNewIndexErrors(t *testing.T) {
	tests := []struct {
		name    string
		entries []*Entry
		want    error
	}{
		{"nil entry", []*Entry{e("/a", "unix:uid:1"), nil}, ErrNilEntry},
		{"no selectors", []*Entry{e("/x")}, ErrNoSelectors},
		{"no SPIFFE ID", []*Entry{{Selectors: sels("unix:uid:1")}}, ErrNoSPIFFEID},
		{"zero selector", []*Entry{{SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/x"), Selectors: []selector.Selector{{}}}}, ErrBadSelector},
		{"upper-case type", []*Entry{{SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/x"), Selectors: []selector.Selector{selector.New("Unix", "uid", "1")}}}, ErrBadSelector},
		{"control character", []*Entry{{SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/x"), Selectors: []selector.Selector{selector.New("unix", "path", "/a\n")}}}, ErrBadSelector},
		{"duplicate derived id", []*Entry{e("/x", "unix:uid:1", "unix:gid:2"), e("/x", "unix:gid:2", "unix:uid:1", "unix:uid:1")}, ErrDuplicateID},
		{"duplicate explicit id", []*Entry{{ID: "a", SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/x"), Selectors: sels("unix:uid:1")},
			{ID: "a", SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/y"), Selectors: sels("unix:uid:2")}}, ErrDuplicateID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := make([]Entry, len(tt.entries))
			for i, en := range tt.entries {
				if en != nil {
					before[i] = *en
				}
			}
			ix, err := NewIndex(tt.entries)
			if !errors.Is(err, tt.want) || ix != nil {
				t.Fatalf("NewIndex = %v, %v; want %v", ix, err, tt.want)
			}
			for i, en := range tt.entries {
				if en != nil && (en.ID != before[i].ID || !slices.Equal(en.Selectors, before[i].Selectors)) {
					t.Errorf("entry %d modified by a failed NewIndex", i)
				}
			}
		})
	}
}

func TestNewIndexNormalizes(t *testing.T) {
	configured := sels("unix:uid:1", "systemd:unit:a.service", "unix:uid:1", "unix:gid:2")
	a := &Entry{SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/a"), Selectors: configured}
	b := &Entry{ID: "explicit", SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/b"), Selectors: sels("unix:uid:3")}
	input := []*Entry{a, b}
	ix, err := NewIndex(input)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(selector.Strings(a.Selectors), ","); got != "systemd:unit:a.service,unix:gid:2,unix:uid:1" {
		t.Errorf("selectors not sorted and deduplicated: %s", got)
	}
	if configured[0].String() != "unix:uid:1" || len(configured) != 4 {
		t.Error("NewIndex modified the caller's selector slice")
	}
	if a.ID != EntryID(a) || b.ID != "explicit" {
		t.Errorf("ids %q %q", a.ID, b.ID)
	}
	input[0] = b // the index keeps its own slice
	if ix.Len() != 2 || ix.Entries()[0] != a || ix.Entries()[1] != b {
		t.Error("Entries/Len wrong, or the index shares the caller's slice")
	}
	if paths(ix.Match(sels("unix:gid:2", "unix:uid:1", "systemd:unit:a.service"))) != "/a" {
		t.Error("normalized entry does not match")
	}
}

func TestEntryIDStable(t *testing.T) {
	// sha256("spiffe://example.org/x\nunix:gid:2\nunix:uid:1")[:8]
	const golden = "84dfe5399dd057bd"
	tests := []struct {
		name string
		en   *Entry
		same bool
	}{
		{"golden", e("/x", "unix:gid:2", "unix:uid:1"), true},
		{"selector order", e("/x", "unix:uid:1", "unix:gid:2"), true},
		{"duplicate selector", e("/x", "unix:uid:1", "unix:gid:2", "unix:uid:1"), true},
		{"explicit ID is ignored", &Entry{ID: "zzz", SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/x"), Selectors: sels("unix:uid:1", "unix:gid:2")}, true},
		{"other SPIFFE ID", e("/y", "unix:uid:1", "unix:gid:2"), false},
		{"other selector", e("/x", "unix:uid:1", "unix:gid:3"), false},
		{"fewer selectors", e("/x", "unix:uid:1"), false},
	}
	for _, tt := range tests {
		got := EntryID(tt.en)
		if (got == golden) != tt.same {
			t.Errorf("%s: EntryID = %s, golden %s, want same=%v", tt.name, got, golden, tt.same)
		}
		if len(got) != 16 || strings.Trim(got, "0123456789abcdef") != "" {
			t.Errorf("%s: EntryID %q is not 16 hex digits", tt.name, got)
		}
	}
}

func TestUses(t *testing.T) {
	ix, err := NewIndex([]*Entry{e("/a", "unix:uid:1", "unix:path:/bin/a"), e("/b", "systemd:unit:b.service")})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		typ, key string
		want     bool
	}{
		{"unix", "uid", true},
		{"unix", "path", true},
		{"systemd", "unit", true},
		{"unix", "sha256", false},
		{"systemd", "uid", false},
		{"unix:uid", "", false},
	}
	for _, tt := range tests {
		if got := ix.Uses(tt.typ, tt.key); got != tt.want {
			t.Errorf("Uses(%q, %q) = %v, want %v", tt.typ, tt.key, got, tt.want)
		}
	}
}

func TestEmpty(t *testing.T) {
	if Empty.Match(sels("unix:uid:0")) != nil || Empty.Len() != 0 || len(Empty.Entries()) != 0 || Empty.Uses("unix", "uid") {
		t.Error("Empty is not deny-all")
	}
	ix, err := NewIndex(nil)
	if err != nil || ix.Match(sels("unix:uid:0")) != nil || ix.Len() != 0 {
		t.Errorf("NewIndex(nil) = %v, %v", ix, err)
	}
}

// bruteForce is the specification of Match.
func bruteForce(entries []*Entry, caller []selector.Selector) []*Entry {
	var out []*Entry
	for _, en := range entries {
		all := true
		for _, s := range en.Selectors {
			if !slices.Contains(caller, s) {
				all = false
				break
			}
		}
		if all {
			out = append(out, en)
		}
	}
	return out
}

// randomPolicy builds entries over a small selector universe so that
// matches, subsets and shared selectors are common.
func randomPolicy(r *rand.Rand, n int) ([]*Entry, []selector.Selector) {
	universe := make([]selector.Selector, 24)
	for i := range universe {
		universe[i] = selector.New([]string{"unix", "systemd", "k8s"}[i%3], "k", fmt.Sprint(i%8))
	}
	var entries []*Entry
	for i := range n {
		en := &Entry{SPIFFEID: spiffeid.RequireFromString(fmt.Sprintf("spiffe://example.org/e%d", i))}
		for range 1 + r.IntN(4) {
			en.Selectors = append(en.Selectors, universe[r.IntN(len(universe))])
		}
		entries = append(entries, en)
	}
	return entries, universe
}

func randomCaller(r *rand.Rand, universe []selector.Selector) []selector.Selector {
	var c []selector.Selector
	for range r.IntN(12) {
		c = append(c, universe[r.IntN(len(universe))])
	}
	return append(c, selector.New("node", "hostname", "unknown"))
}

func TestMatchAgainstBruteForce(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	entries, universe := randomPolicy(r, 400)
	ix, err := NewIndex(entries)
	if err != nil {
		t.Fatal(err)
	}
	matched := 0
	for i := range 3000 {
		caller := randomCaller(r, universe)
		got, want := ix.Match(caller), bruteForce(entries, caller)
		if !slices.Equal(got, want) {
			t.Fatalf("caller %d %v: got %s, want %s", i, selector.Strings(caller), paths(got), paths(want))
		}
		matched += len(got)
	}
	if matched == 0 {
		t.Fatal("the random policy never matched: the test checks nothing")
	}
}

// TestMatchConcurrent shares one index (and its scratch pool) between
// goroutines; -race checks the pooling.
func TestMatchConcurrent(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	entries, universe := randomPolicy(r, 200)
	ix, err := NewIndex(entries)
	if err != nil {
		t.Fatal(err)
	}
	callers := make([][]selector.Selector, 200)
	for i := range callers {
		callers[i] = randomCaller(r, universe)
	}
	var wg sync.WaitGroup
	errs := make(chan string, 4)
	for g := range 4 {
		wg.Go(func() {
			for i := range callers {
				c := callers[(i+g*50)%len(callers)]
				if got, want := ix.Match(c), bruteForce(entries, c); !slices.Equal(got, want) {
					errs <- fmt.Sprintf("got %s, want %s", paths(got), paths(want))
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for msg := range errs {
		t.Error(msg)
	}
}

// An entry written with SPIRE's spellings matches the selectors nodeward's
// attestors produce.
func TestSPIRESpellingsMatch(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	e := &Entry{SPIFFEID: spiffeid.RequireFromPath(td, "/web"), Selectors: []selector.Selector{
		selector.MustParse("unix:supplementary_gid:44"), selector.MustParse("systemd:id:web.service")}}
	ix, err := NewIndex([]*Entry{e})
	if err != nil {
		t.Fatal(err)
	}
	got := ix.Match([]selector.Selector{selector.MustParse("unix:supplementary-gid:44"), selector.MustParse("systemd:unit:web.service"), selector.MustParse("unix:uid:5")})
	if len(got) != 1 {
		t.Fatalf("SPIRE spellings did not match nodeward's selectors: %v", got)
	}
	if ix.Match([]selector.Selector{selector.MustParse("systemd:unit:web.service")}) != nil {
		t.Fatal("a partial match granted the entry")
	}
}
