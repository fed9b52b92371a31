package policy

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodeward/nodeward/attestors/selector"
)

func e(path string, sels ...string) *Entry {
	en := &Entry{SPIFFEID: spiffeid.RequireFromString("spiffe://example.org" + path)}
	for _, s := range sels {
		en.Selectors = append(en.Selectors, selector.MustParse(s))
	}
	return en
}

func sels(ss ...string) []selector.Selector {
	out := make([]selector.Selector, len(ss))
	for i, s := range ss {
		out[i] = selector.MustParse(s)
	}
	return out
}

func paths(es []*Entry) string {
	var p []string
	for _, x := range es {
		p = append(p, x.SPIFFEID.Path())
	}
	return strings.Join(p, ",")
}

func TestMatch(t *testing.T) {
	ix, err := NewIndex([]*Entry{
		e("/web", "unix:uid:1000", "unix:path:/usr/bin/web"),
		e("/any1000", "unix:uid:1000"),
		e("/unit", "unix:uid:1000", "systemd:unit:web.service"),
		e("/dup", "unix:gid:5", "unix:gid:5"),
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		in   []selector.Selector
		want string
	}{
		{"uid only", sels("unix:uid:1000"), "/any1000"},
		{"uid and path", sels("unix:uid:1000", "unix:path:/usr/bin/web", "unix:gid:1"), "/web,/any1000"},
		{"two types", sels("systemd:unit:web.service", "unix:uid:1000"), "/any1000,/unit"},
		{"duplicated caller selectors do not double count", sels("unix:uid:1000", "unix:uid:1000", "unix:path:/x"), "/any1000"},
		{"entry with repeated selector", sels("unix:gid:5"), "/dup"},
		{"no match", sels("unix:uid:1"), ""},
		{"empty caller", nil, ""},
	}
	for _, tt := range tests {
		got := ix.Match(tt.in)
		if paths(got) != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, paths(got), tt.want)
		}
		if tt.want == "" && got != nil {
			t.Errorf("%s: no match must be nil", tt.name)
		}
	}
	if !ix.Uses("unix", "path") || ix.Uses("unix", "sha256") {
		t.Error("Uses is wrong")
	}
}

func TestNewIndexErrors(t *testing.T) {
	if _, err := NewIndex([]*Entry{e("/x")}); !errors.Is(err, ErrNoSelectors) {
		t.Errorf("no selectors: %v", err)
	}
	if _, err := NewIndex([]*Entry{{Selectors: sels("unix:uid:1")}}); !errors.Is(err, ErrNoSPIFFEID) {
		t.Errorf("no id: %v", err)
	}
	if _, err := NewIndex([]*Entry{e("/x", "unix:uid:1"), e("/x", "unix:uid:1")}); !errors.Is(err, ErrDuplicateID) {
		t.Errorf("duplicate: %v", err)
	}
	if Empty.Match(sels("unix:uid:0")) != nil || Empty.Len() != 0 {
		t.Error("Empty index matched")
	}
}

func TestEntryIDStable(t *testing.T) {
	a := EntryID(e("/x", "unix:uid:1", "unix:gid:2"))
	b := EntryID(e("/x", "unix:gid:2", "unix:uid:1"))
	c := EntryID(e("/y", "unix:uid:1", "unix:gid:2"))
	if a != b || a == c || len(a) != 16 {
		t.Fatalf("EntryID: %s %s %s", a, b, c)
	}
}

// bigIndex builds 10,000 entries: one per uid, each also needing a shared
// group, plus 100 entries keyed on binary paths.
func bigIndex(tb testing.TB) *Index {
	tb.Helper()
	var entries []*Entry
	for i := range 9900 {
		entries = append(entries, e(fmt.Sprintf("/uid/%d", i), fmt.Sprintf("unix:uid:%d", i), "unix:gid:100"))
	}
	for i := range 100 {
		entries = append(entries, e(fmt.Sprintf("/bin/%d", i), "unix:gid:100", fmt.Sprintf("unix:path:/usr/bin/app%d", i)))
	}
	ix, err := NewIndex(entries)
	if err != nil {
		tb.Fatal(err)
	}
	return ix
}

func caller(uid int) []selector.Selector {
	return sels(fmt.Sprintf("unix:uid:%d", uid), "unix:gid:100", "unix:user:u", "unix:group:g",
		"unix:supplementary-gid:100", "unix:supplementary-gid:27", "unix:supplementary-gid:44",
		"unix:path:/usr/bin/app7", "unix:sha256:abcd", "systemd:unit:app.service")
}

func TestMatchTenThousand(t *testing.T) {
	ix := bigIndex(t)
	if got := paths(ix.Match(caller(4242))); got != "/uid/4242,/bin/7" {
		t.Fatalf("got %q", got)
	}
	if got := ix.Match(sels("unix:uid:4242")); got != nil {
		t.Fatalf("partial selectors matched: %v", paths(got))
	}
}

func BenchmarkMatch10k(b *testing.B) {
	ix := bigIndex(b)
	c := caller(4242)
	b.ReportAllocs()
	for b.Loop() {
		if len(ix.Match(c)) != 2 {
			b.Fatal("wrong match")
		}
	}
}
