package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// maxQuoted is how much of an offending value an error message quotes.
const maxQuoted = 128

// decoder walks yaml.Nodes of one file, producing posErrors that name it.
type decoder struct{ file string }

func (d decoder) errf(n *yaml.Node, field, format string, args ...any) error {
	return d.wrapf(n, field, nil, format, args...)
}

func (d decoder) wrapf(n *yaml.Node, field string, cause error, format string, args ...any) error {
	line := 0
	if n != nil {
		line = n.Line
	}
	return &posError{file: d.file, line: line, field: field, msg: fmt.Sprintf(format, args...), cause: cause}
}

// quote renders an offending value for an error message: Go-quoted and
// shortened, so a message never carries more of the file than needed.
func quote(s string) string {
	if len(s) <= maxQuoted {
		return strconv.Quote(s)
	}
	cut := maxQuoted
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "…"
}

// root parses data as a single YAML document and returns its top-level
// mapping, or nil for an empty document.
func (d decoder) root(data []byte) (*yaml.Node, error) {
	if len(data) > MaxFileSize {
		return nil, tooLarge(d.file)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, d.yamlErr(data, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, d.errf(&extra, "", "more than one YAML document (a second \"---\")")
	} else if !errors.Is(err, io.EOF) {
		return nil, d.yamlErr(data, err)
	}
	if err := d.noAliases(&doc); err != nil {
		return nil, err
	}
	if len(doc.Content) == 0 {
		return nil, nil
	}
	m := doc.Content[0]
	if isNull(m) {
		return nil, nil
	}
	if m.Kind != yaml.MappingNode {
		return nil, d.errf(m, "", "the top level must be a mapping of keys")
	}
	return m, nil
}

// noAliases refuses YAML aliases anywhere in the tree: the schema has no use
// for them, and refusing them means no input can make the walk repeat work.
// Depth is bounded by yaml.v3 (10000 levels).
func (d decoder) noAliases(n *yaml.Node) error {
	if n.Kind == yaml.AliasNode {
		// The alias's name is the file's content: not quoted (see yamlErr).
		return d.errf(n, "", "YAML aliases (*name) are not supported: write the value out")
	}
	for _, c := range n.Content {
		if err := d.noAliases(c); err != nil {
			return err
		}
	}
	return nil
}

// yamlErr turns a yaml.v3 syntax error ("yaml: line N: msg", or "yaml: msg"
// when it has no line) into "FILE:N: invalid YAML: msg".
func (d decoder) yamlErr(data []byte, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if num, m, ok := strings.Cut(rest, ": "); ok {
			if n, err := strconv.Atoi(num); err == nil && n > 0 {
				line, msg = n, m
			}
		}
	}
	switch {
	case line == 0:
		line = guessLine(data, msg)
	case parserError(msg):
		// yaml.v3 reports the parser's (not the scanner's) errors at the
		// 0-based line of their context; a problem at the end of the file
		// is then one past the last line.
		line = min(line+1, lastLine(data))
	}
	// Security: the file did not parse, so it may be anything (an
	// entries_file pointing at /etc/shadow): no text of it may reach the
	// message. yaml.v3's syntax messages are fixed strings but for the
	// anchor ones, which carry the anchor's name.
	if strings.HasPrefix(msg, "unknown anchor '") {
		msg = "unknown anchor referenced"
	} else if strings.HasPrefix(msg, "anchor '") {
		msg = "anchor value contains itself"
	}
	return &posError{file: d.file, line: line, msg: "invalid YAML: " + msg}
}

// parserError reports whether msg is one of yaml.v3's parser errors.
func parserError(msg string) bool {
	if strings.HasPrefix(msg, "did not find expected ") {
		return true
	}
	switch msg {
	case "found duplicate %YAML directive", "found incompatible YAML document",
		"found duplicate %TAG directive", "found undefined tag handle":
		return true
	}
	return false
}

// lastLine is the number of the file's last line.
func lastLine(data []byte) int {
	n := bytes.Count(data, []byte("\n"))
	if len(data) == 0 || data[len(data)-1] != '\n' {
		n++
	}
	return n
}

// guessLine finds the line of a yaml.v3 error that carries none. Reader
// errors (bad UTF-8, control characters) are at the first such character;
// an unknown anchor at its first use; any other error lacks a line only
// because it is on the first (yaml.v3 omits "line 1").
func guessLine(data []byte, msg string) int {
	if name, ok := strings.CutPrefix(msg, "unknown anchor '"); ok {
		name = strings.TrimSuffix(name, "' referenced")
		if i := bytes.Index(data, []byte("*"+name)); i >= 0 {
			return lineAt(data, i)
		}
	}
	if strings.Contains(msg, "UTF-8") || strings.Contains(msg, "control characters") {
		for i := 0; i < len(data); {
			r, size := utf8.DecodeRune(data[i:])
			if (r == utf8.RuneError && size <= 1) || !yamlPrintable(r, i) {
				return lineAt(data, i)
			}
			i += size
		}
	}
	return 1
}

// yamlPrintable is YAML 1.2's c-printable (a BOM only at the start).
func yamlPrintable(r rune, offset int) bool {
	switch {
	case r == '\t', r == '\n', r == '\r', r >= 0x20 && r <= 0x7e, r == 0x85:
		return true
	case r == 0xfeff:
		return offset == 0
	case r >= 0xa0 && r <= 0xd7ff, r >= 0xe000 && r <= 0xfffd, r >= 0x10000 && r <= 0x10ffff:
		return true
	}
	return false
}

func lineAt(data []byte, offset int) int {
	return bytes.Count(data[:offset], []byte("\n")) + 1
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

// fields walks mapping m, calling the setter of each key, and fails on an
// unknown or duplicate key. where names the mapping in messages ("" for the
// top level, "entries[0]", "guardrails").
func (d decoder) fields(m *yaml.Node, where string, known map[string]func(v *yaml.Node) error) error {
	in := ""
	if where != "" {
		in = " in " + where
	}
	seen := make(map[string]bool, len(m.Content)/2)
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return d.errf(k, where, "keys must be plain strings")
		}
		set, ok := known[k.Value]
		if !ok && where == "" && !anyKnown(m, known) {
			// Security: a file with none of our top-level keys may be any
			// file that happens to parse as YAML (a line of /etc/shadow is
			// a one-key mapping): never quote it into an error or a log.
			return d.wrapf(k, "", ErrUnknownKey, "unknown key (not shown: the file has none of the keys of this kind of file, so it may not be one; check the path)")
		}
		if !ok {
			return d.wrapf(k, "", ErrUnknownKey, "unknown key %s%s", quote(k.Value), in)
		}
		if seen[k.Value] {
			return d.errf(k, "", "duplicate key %s%s", quote(k.Value), in)
		}
		seen[k.Value] = true
		if err := set(v); err != nil {
			return err
		}
	}
	return nil
}

// anyKnown reports whether mapping m has at least one key of known.
func anyKnown(m *yaml.Node, known map[string]func(v *yaml.Node) error) bool {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if _, ok := known[m.Content[i].Value]; ok && m.Content[i].Kind == yaml.ScalarNode {
			return true
		}
	}
	return false
}

func (d decoder) str(v *yaml.Node, field string, dst *string) error {
	if v.Kind != yaml.ScalarNode || isNull(v) {
		return d.errf(v, field, "want a string, got %s", kindName(v))
	}
	*dst = v.Value
	return nil
}

// text is str for free text (ids, hints, owners): no control characters.
func (d decoder) text(v *yaml.Node, field string, dst *string) error {
	if err := d.str(v, field, dst); err != nil {
		return err
	}
	for _, r := range *dst {
		if r < 0x20 || r == 0x7f {
			return d.errf(v, field, "contains a control character")
		}
	}
	return nil
}

func (d decoder) strList(v *yaml.Node, field string, dst *[]string) error {
	if isNull(v) {
		return nil
	}
	if v.Kind != yaml.SequenceNode {
		return d.errf(v, field, "want a list, got %s", kindName(v))
	}
	for i, item := range v.Content {
		var s string
		if err := d.str(item, fmt.Sprintf("%s[%d]", field, i), &s); err != nil {
			return err
		}
		*dst = append(*dst, s)
	}
	return nil
}

func (d decoder) duration(v *yaml.Node, field string, dst *Duration) error {
	if v.Kind != yaml.ScalarNode || isNull(v) {
		return d.errf(v, field, "want a duration such as 1h or 5m, got %s", kindName(v))
	}
	if v.Tag == "!!int" {
		return d.errf(v, field, "invalid duration %s: give a unit, such as 1h or 300s", quote(v.Value))
	}
	dur, err := parseDuration(v.Value)
	if err != nil {
		return d.errf(v, field, "invalid duration %s: want a duration such as 1h, 5m30s or 30d", quote(v.Value))
	}
	if dur <= 0 || dur > MaxTTL {
		return d.errf(v, field, "duration %s out of range: want more than 0s and at most 8760h (1 year)", quote(v.Value))
	}
	*dst = Duration(dur)
	return nil
}

func (d decoder) boolean(v *yaml.Node, field string, dst *bool) error {
	if v.Kind == yaml.ScalarNode && v.Tag == "!!bool" {
		if b, err := strconv.ParseBool(strings.ToLower(v.Value)); err == nil {
			*dst = b
			return nil
		}
	}
	return d.errf(v, field, "want true or false, got %s", kindName(v))
}

// kindName describes a node's type for "want X, got Y" messages.
func kindName(v *yaml.Node) string {
	switch {
	case v.Kind == yaml.MappingNode:
		return "a mapping"
	case v.Kind == yaml.SequenceNode:
		return "a list"
	case isNull(v):
		return "nothing"
	}
	return quote(v.Value)
}

// parseDuration is time.ParseDuration that also takes whole days ("30d",
// "7d"), the unit TTLs and staleness are usually thought in.
func parseDuration(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseUint(days, 10, 16)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	return time.ParseDuration(s)
}
