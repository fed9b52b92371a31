package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"gopkg.in/yaml.v3"

	"github.com/nodeward/nodeward/attestors/selector"
)

// posError is an error at a place in a file.
type posError struct {
	file  string
	line  int
	field string
	msg   string
}

func (e *posError) Error() string {
	if e.field == "" {
		return fmt.Sprintf("%s:%d: %s", e.file, e.line, e.msg)
	}
	return fmt.Sprintf("%s:%d: %s: %s", e.file, e.line, e.field, e.msg)
}

type decoder struct{ file string }

func (d decoder) errf(n *yaml.Node, field, format string, args ...any) error {
	line := 0
	if n != nil {
		line = n.Line
	}
	return &posError{file: d.file, line: line, field: field, msg: fmt.Sprintf(format, args...)}
}

// root parses data into a single document's top-level mapping (nil for an
// empty file).
func (d decoder) root(data []byte) (*yaml.Node, error) {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, d.yamlErr(err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, d.errf(&extra, "", "more than one YAML document")
	} else if !errors.Is(err, io.EOF) {
		return nil, d.yamlErr(err)
	}
	if len(doc.Content) == 0 {
		return nil, nil
	}
	m := doc.Content[0]
	if m.Kind == yaml.ScalarNode && m.Tag == "!!null" {
		return nil, nil
	}
	if m.Kind != yaml.MappingNode {
		return nil, d.errf(m, "", "the top level must be a mapping of keys")
	}
	return m, nil
}

// yamlErr turns a yaml.v3 syntax error ("yaml: line N: msg") into FILE:N: msg.
func (d decoder) yamlErr(err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var line int
	if n, _ := fmt.Sscanf(msg, "line %d:", &line); n == 1 {
		msg = strings.TrimSpace(msg[strings.Index(msg, ":")+1:])
		return &posError{file: d.file, line: line, msg: msg}
	}
	return fmt.Errorf("%s: %s", d.file, msg)
}

// fields walks a mapping, calling set for each known key and failing on
// unknown or duplicate keys.
func (d decoder) fields(m *yaml.Node, prefix string, known map[string]func(k, v *yaml.Node) error) error {
	seen := make(map[string]bool, len(m.Content)/2)
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return d.errf(k, prefix, "keys must be plain strings")
		}
		set, ok := known[k.Value]
		if !ok {
			if prefix != "" {
				return d.errf(k, "", "unknown key %q in %s", k.Value, prefix)
			}
			return d.errf(k, "", "unknown key %q", k.Value)
		}
		if seen[k.Value] {
			return d.errf(k, "", "duplicate key %q", k.Value)
		}
		seen[k.Value] = true
		if err := set(k, v); err != nil {
			return err
		}
	}
	return nil
}

func (d decoder) str(v *yaml.Node, field string, dst *string) error {
	if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
		return d.errf(v, field, "want a string")
	}
	*dst = v.Value
	return nil
}

func (d decoder) strList(v *yaml.Node, field string, dst *[]string) error {
	if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
		return nil
	}
	if v.Kind != yaml.SequenceNode {
		return d.errf(v, field, "want a list")
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
	if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
		return d.errf(v, field, "want a duration such as 1h or 5m")
	}
	if v.Tag == "!!int" {
		return d.errf(v, field, "invalid duration %q: give a unit, such as 1h or 300s", v.Value)
	}
	dur, err := time.ParseDuration(v.Value)
	if err != nil {
		return d.errf(v, field, "invalid duration %q: want a duration such as 1h or 5m", v.Value)
	}
	if dur <= 0 || dur > MaxTTL {
		return d.errf(v, field, "duration %s out of range (0, %s]", v.Value, "8760h")
	}
	*dst = Duration(dur)
	return nil
}

// Parse decodes a config held in data; name is the file name used in error
// messages, and relative entries_file paths are resolved against its
// directory.
func Parse(name string, data []byte) (*Agent, error) {
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("config: %s: larger than %d bytes", name, MaxFileSize)
	}
	d := decoder{file: name}
	cfg := Default()
	cfg.Source = name
	m, err := d.root(data)
	if err != nil {
		return nil, err
	}
	var entriesNode, tdNode *yaml.Node
	if m != nil {
		err = d.fields(m, "", map[string]func(k, v *yaml.Node) error{
			"trust_domain": func(_, v *yaml.Node) error { tdNode = v; return d.str(v, "trust_domain", &cfg.TrustDomain) },
			"socket_path": func(_, v *yaml.Node) error {
				if err := d.str(v, "socket_path", &cfg.SocketPath); err != nil {
					return err
				}
				if !filepath.IsAbs(cfg.SocketPath) {
					return d.errf(v, "socket_path", "must be an absolute path, got %q", cfg.SocketPath)
				}
				return nil
			},
			"data_dir": func(_, v *yaml.Node) error {
				if err := d.str(v, "data_dir", &cfg.DataDir); err != nil {
					return err
				}
				if cfg.DataDir == "" {
					return d.errf(v, "data_dir", "must not be empty")
				}
				return nil
			},
			"admin_listen": func(_, v *yaml.Node) error {
				if v.Tag == "!!null" {
					return nil
				}
				return d.str(v, "admin_listen", &cfg.AdminListen)
			},
			"log_level": func(_, v *yaml.Node) error {
				if err := d.str(v, "log_level", &cfg.LogLevel); err != nil {
					return err
				}
				switch cfg.LogLevel {
				case "debug", "info", "warn", "error":
					return nil
				}
				return d.errf(v, "log_level", "unknown level %q (want debug, info, warn or error)", cfg.LogLevel)
			},
			"jwt_issuer": func(_, v *yaml.Node) error {
				if err := d.str(v, "jwt_issuer", &cfg.JWTIssuer); err != nil {
					return err
				}
				u, err := url.Parse(cfg.JWTIssuer)
				if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
					return d.errf(v, "jwt_issuer", "want an http(s) URL without query or fragment, got %q", cfg.JWTIssuer)
				}
				return nil
			},
			"audit_log": func(_, v *yaml.Node) error {
				if err := d.str(v, "audit_log", &cfg.AuditLog); err != nil {
					return err
				}
				switch {
				case cfg.AuditLog == "stdout", cfg.AuditLog == "stderr", cfg.AuditLog == "off", filepath.IsAbs(cfg.AuditLog):
					return nil
				}
				return d.errf(v, "audit_log", "want stdout, stderr, off or an absolute file path, got %q", cfg.AuditLog)
			},
			"max_procs": func(_, v *yaml.Node) error {
				n, err := strconv.Atoi(v.Value)
				if v.Kind != yaml.ScalarNode || v.Tag != "!!int" || err != nil || n < 0 || n > 1024 {
					return d.errf(v, "max_procs", "want an integer from 0 (all CPUs) to 1024")
				}
				cfg.MaxProcs = n
				return nil
			},
			"guardrails":   func(_, v *yaml.Node) error { return d.guardrails(v, &cfg.Guardrails) },
			"entries":      func(_, v *yaml.Node) error { entriesNode = v; return nil },
			"entries_file": func(_, v *yaml.Node) error { return d.str(v, "entries_file", &cfg.EntriesFile) },
		})
		if err != nil {
			return nil, err
		}
	}
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, d.errf(tdNode, "trust_domain", "invalid trust domain %q: %v", cfg.TrustDomain, err)
	}
	if entriesNode != nil {
		if cfg.Entries, err = d.entries(entriesNode, td); err != nil {
			return nil, err
		}
	}
	if cfg.EntriesFile != "" {
		p := cfg.EntriesFile
		if !filepath.IsAbs(p) {
			p = filepath.Join(filepath.Dir(name), p)
		}
		data, err := readFile(p)
		if err != nil {
			return nil, fmt.Errorf("%s: entries_file: %w", name, err)
		}
		more, err := parseEntriesFile(p, data, td)
		if err != nil {
			return nil, err
		}
		cfg.Entries = append(cfg.Entries, more...)
	}
	return cfg, nil
}

func parseEntriesFile(name string, data []byte, td spiffeid.TrustDomain) ([]Entry, error) {
	d := decoder{file: name}
	m, err := d.root(data)
	if err != nil || m == nil {
		return nil, err
	}
	var out []Entry
	err = d.fields(m, "", map[string]func(k, v *yaml.Node) error{
		"entries": func(_, v *yaml.Node) error {
			var err error
			out, err = d.entries(v, td)
			return err
		},
	})
	return out, err
}

func (d decoder) entries(v *yaml.Node, td spiffeid.TrustDomain) ([]Entry, error) {
	if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
		return nil, nil
	}
	if v.Kind != yaml.SequenceNode {
		return nil, d.errf(v, "entries", "want a list of entries")
	}
	out := make([]Entry, 0, len(v.Content))
	for i, n := range v.Content {
		e, err := d.entry(n, fmt.Sprintf("entries[%d]", i), td)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

func (d decoder) entry(n *yaml.Node, field string, td spiffeid.TrustDomain) (Entry, error) {
	e := Entry{X509TTL: Duration(DefaultX509TTL), JWTTTL: Duration(DefaultJWTTTL), Pos: fmt.Sprintf("%s:%d", d.file, n.Line)}
	if n.Kind != yaml.MappingNode {
		return e, d.errf(n, field, "want a mapping with spiffe_id and selectors")
	}
	var idNode, selNode *yaml.Node
	err := d.fields(n, field, map[string]func(k, v *yaml.Node) error{
		"id": func(_, v *yaml.Node) error { return d.str(v, field+".id", &e.ID) },
		"spiffe_id": func(_, v *yaml.Node) error {
			idNode = v
			return d.str(v, field+".spiffe_id", &e.SPIFFEID)
		},
		"selectors": func(_, v *yaml.Node) error {
			selNode = v
			if err := d.strList(v, field+".selectors", &e.Selectors); err != nil {
				return err
			}
			for i, s := range e.Selectors {
				sel, err := selector.Parse(s)
				if err != nil {
					return d.errf(v.Content[i], fmt.Sprintf("%s.selectors[%d]", field, i), "%v", err)
				}
				e.ParsedSelectors = append(e.ParsedSelectors, sel)
			}
			return nil
		},
		"x509_ttl": func(_, v *yaml.Node) error { return d.duration(v, field+".x509_ttl", &e.X509TTL) },
		"jwt_ttl":  func(_, v *yaml.Node) error { return d.duration(v, field+".jwt_ttl", &e.JWTTTL) },
		"dns_names": func(_, v *yaml.Node) error {
			if err := d.strList(v, field+".dns_names", &e.DNSNames); err != nil {
				return err
			}
			for i, name := range e.DNSNames {
				if !validDNSName(name) {
					return d.errf(v.Content[i], fmt.Sprintf("%s.dns_names[%d]", field, i), "invalid DNS name %q", name)
				}
			}
			return nil
		},
		"hint":  func(_, v *yaml.Node) error { return d.str(v, field+".hint", &e.Hint) },
		"owner": func(_, v *yaml.Node) error { return d.str(v, field+".owner", &e.Owner) },
		"expires": func(_, v *yaml.Node) error {
			var raw string
			if err := d.str(v, field+".expires", &raw); err != nil {
				return err
			}
			for _, layout := range []string{time.RFC3339, "2006-01-02"} {
				if t, err := time.Parse(layout, raw); err == nil {
					e.Expires = t
					return nil
				}
			}
			return d.errf(v, field+".expires", "invalid date %q: want YYYY-MM-DD or RFC 3339", raw)
		},
	})
	if err != nil {
		return e, err
	}
	if idNode == nil {
		return e, d.errf(n, field, "spiffe_id is required")
	}
	id, err := spiffeid.FromString(e.SPIFFEID)
	if err != nil {
		return e, d.errf(idNode, field+".spiffe_id", "invalid SPIFFE ID %q: %v", e.SPIFFEID, err)
	}
	if id.Path() == "" {
		return e, d.errf(idNode, field+".spiffe_id", "%q has no path: a workload ID needs one", e.SPIFFEID)
	}
	if !td.IsZero() && id.TrustDomain() != td {
		return e, d.errf(idNode, field+".spiffe_id", "%q is outside trust domain %s", e.SPIFFEID, td.Name())
	}
	e.ParsedID = id
	if len(e.ParsedSelectors) == 0 {
		at := selNode
		if at == nil {
			at = n
		}
		return e, d.errf(at, field+".selectors", "at least one selector is required (an entry without selectors would match every process)")
	}
	return e, nil
}

// validDNSName checks an RFC 1123 host name (a leading "*." wildcard allowed).
func validDNSName(name string) bool {
	name = strings.TrimPrefix(name, "*.")
	if name == "" || len(name) > 253 {
		return false
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

func (d decoder) boolean(v *yaml.Node, field string, dst *bool) error {
	if v.Kind != yaml.ScalarNode || v.Tag != "!!bool" {
		return d.errf(v, field, "want true or false")
	}
	*dst = v.Value == "true"
	return nil
}

func (d decoder) guardrails(v *yaml.Node, g *Guardrails) error {
	if v.Kind != yaml.MappingNode {
		return d.errf(v, "guardrails", "want a mapping")
	}
	return d.fields(v, "guardrails", map[string]func(k, v *yaml.Node) error{
		"max_x509_ttl":    func(_, v *yaml.Node) error { return d.duration(v, "guardrails.max_x509_ttl", &g.MaxX509TTL) },
		"max_jwt_ttl":     func(_, v *yaml.Node) error { return d.duration(v, "guardrails.max_jwt_ttl", &g.MaxJWTTTL) },
		"require_owner":   func(_, v *yaml.Node) error { return d.boolean(v, "guardrails.require_owner", &g.RequireOwner) },
		"require_expires": func(_, v *yaml.Node) error { return d.boolean(v, "guardrails.require_expires", &g.RequireExpires) },
	})
}
