package policy

import (
	"fmt"
	"testing"

	"github.com/nodeward/nodeward/attestors/selector"
)

// bigEntries returns 10,000 entries: 9,900 keyed on distinct uids, each
// also needing the shared group unix:gid:100, plus 100 keyed on binary paths
// (with the same group).
func bigEntries() []*Entry {
	entries := make([]*Entry, 0, 10000)
	for i := range 9900 {
		entries = append(entries, e(fmt.Sprintf("/uid/%d", i), fmt.Sprintf("unix:uid:%d", i), "unix:gid:100"))
	}
	for i := range 100 {
		entries = append(entries, e(fmt.Sprintf("/bin/%d", i), "unix:gid:100", fmt.Sprintf("unix:path:/usr/bin/app%d", i)))
	}
	return entries
}

func bigIndex(tb testing.TB) *Index {
	tb.Helper()
	ix, err := NewIndex(bigEntries())
	if err != nil {
		tb.Fatal(err)
	}
	return ix
}

// caller is a realistic attested selector set of 10 selectors.
func caller(uid int) []selector.Selector {
	return sels(fmt.Sprintf("unix:uid:%d", uid), "unix:gid:100", "unix:user:u", "unix:group:g",
		"unix:supplementary-gid:100", "unix:supplementary-gid:27", "unix:supplementary-gid:44",
		"unix:path:/usr/bin/app7", "unix:sha256:abcd", "systemd:unit:app.service")
}

func TestMatchTenThousand(t *testing.T) {
	ix := bigIndex(t)
	tests := []struct {
		name string
		in   []selector.Selector
		want string
	}{
		{"uid and path", caller(4242), "/uid/4242,/bin/7"},
		{"first and last uid", append(caller(0), sels("unix:uid:9899")...), "/uid/0,/uid/9899,/bin/7"},
		{"unknown uid", caller(20000), "/bin/7"},
		{"uid without the group", sels("unix:uid:4242"), ""},
		{"group alone", sels("unix:gid:100"), ""},
	}
	for _, tt := range tests {
		if got := paths(ix.Match(tt.in)); got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, got, tt.want)
		}
	}
	if ix.Len() != 10000 {
		t.Errorf("Len = %d", ix.Len())
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

func BenchmarkMatch10kParallel(b *testing.B) {
	ix := bigIndex(b)
	c := caller(4242)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if len(ix.Match(c)) != 2 {
				b.Error("wrong match")
				return
			}
		}
	})
}

func BenchmarkNewIndex10k(b *testing.B) {
	entries := bigEntries()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := NewIndex(entries); err != nil {
			b.Fatal(err)
		}
	}
}
