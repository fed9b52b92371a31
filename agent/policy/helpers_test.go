package policy

import (
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodeward/nodeward/attestors/selector"
)

// e builds an entry for spiffe://example.org<path> with the given selectors.
func e(path string, ss ...string) *Entry {
	en := &Entry{SPIFFEID: spiffeid.RequireFromString("spiffe://example.org" + path)}
	for _, s := range ss {
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

// paths renders matched entries as their comma-separated paths.
func paths(es []*Entry) string {
	p := make([]string, len(es))
	for i, x := range es {
		p[i] = x.SPIFFEID.Path()
	}
	return strings.Join(p, ",")
}
