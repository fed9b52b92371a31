// Package selector defines the one type shared by attestors and policy: a
// Selector is a fact about a workload or node, written "type:key:value"
// (for example "unix:uid:1000" or "tpm:pcr:sha256:7:ab12…").
//
// Security: selectors produced by attestors are trusted facts; selectors
// parsed from configuration are operator input and are validated strictly
// (bounded length, no control characters) before they reach the policy index.
package selector

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// MaxLen is the longest selector string accepted by Parse.
const MaxLen = 1024

// ErrInvalid is wrapped by every Parse error.
var ErrInvalid = errors.New("invalid selector")

// Selector is one attested fact: Type names the attestor ("unix", "systemd",
// "tpm", …), Key the fact ("uid", "unit", …) and Value its value. Value may
// itself contain colons.
type Selector struct {
	Type  string
	Key   string
	Value string
}

// New returns the selector type:key:value.
func New(typ, key, value string) Selector {
	return Selector{Type: typ, Key: key, Value: value}
}

// String renders the selector as "type:key:value".
func (s Selector) String() string {
	return s.Type + ":" + s.Key + ":" + s.Value
}

// Parse parses "type:key:value". Type and key are lower-case names
// ([a-z0-9_-]+); value is any non-empty text without control characters and
// may contain further colons.
func Parse(s string) (Selector, error) {
	if len(s) > MaxLen {
		return Selector{}, fmt.Errorf("%w: longer than %d bytes", ErrInvalid, MaxLen)
	}
	typ, rest, ok := strings.Cut(s, ":")
	if !ok {
		return Selector{}, fmt.Errorf("%w %q: want type:key:value", ErrInvalid, s)
	}
	key, value, ok := strings.Cut(rest, ":")
	if !ok {
		return Selector{}, fmt.Errorf("%w %q: want type:key:value", ErrInvalid, s)
	}
	if err := checkName(typ); err != nil {
		return Selector{}, fmt.Errorf("%w %q: type: %v", ErrInvalid, s, err)
	}
	if err := checkName(key); err != nil {
		return Selector{}, fmt.Errorf("%w %q: key: %v", ErrInvalid, s, err)
	}
	if value == "" {
		return Selector{}, fmt.Errorf("%w %q: empty value", ErrInvalid, s)
	}
	for _, r := range value {
		if r < 0x20 || r == 0x7f || r == '\uFFFD' {
			return Selector{}, fmt.Errorf("%w: value contains a control or invalid character", ErrInvalid)
		}
	}
	return Selector{Type: typ, Key: key, Value: value}, nil
}

// MustParse is Parse for constants in tests and tables; it panics on error.
func MustParse(s string) Selector {
	sel, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return sel
}

func checkName(n string) error {
	if n == "" {
		return errors.New("empty")
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("character %q not allowed (want [a-z0-9_-])", c)
		}
	}
	return nil
}

// Sort orders selectors by their string form, in place, and returns them.
func Sort(sels []Selector) []Selector {
	sort.Slice(sels, func(i, j int) bool {
		a, b := sels[i], sels[j]
		if a.Type != b.Type {
			return a.Type < b.Type
		}
		if a.Key != b.Key {
			return a.Key < b.Key
		}
		return a.Value < b.Value
	})
	return sels
}

// Strings renders each selector with String.
func Strings(sels []Selector) []string {
	out := make([]string, len(sels))
	for i, s := range sels {
		out[i] = s.String()
	}
	return out
}

// aliases maps other spellings of a fact to nodeward's: SPIRE's workload
// attestors name two facts differently (unix:supplementary_gid,
// systemd:id), and an entry written for spire-agent must match the same
// workloads under nodeward.
var aliases = map[[2]string][2]string{
	{"unix", "supplementary_gid"}: {"unix", "supplementary-gid"},
	{"systemd", "id"}:             {"systemd", "unit"},
}

// Canonical returns s in nodeward's spelling: SPIRE's unix:supplementary_gid
// is unix:supplementary-gid and systemd:id is systemd:unit; every other
// selector is returned as is.
func Canonical(s Selector) Selector {
	if to, ok := aliases[[2]string{s.Type, s.Key}]; ok {
		s.Type, s.Key = to[0], to[1]
	}
	return s
}
