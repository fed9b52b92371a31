package config

import (
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"gopkg.in/yaml.v3"

	"github.com/nodeward/nodeward/attestors/selector"
	"github.com/nodeward/nodeward/internal/dnsname"
)

// maxSPIFFEID is the longest SPIFFE ID accepted (the SPIFFE-ID spec's
// 2048-byte URI limit).
const maxSPIFFEID = 2048

// parseEntriesFile decodes a file whose only key is `entries`. td, when not
// zero, is the trust domain every SPIFFE ID must be in; ids holds the
// explicit entry ids seen so far (shared with the config's inline entries).
func parseEntriesFile(name string, data []byte, td spiffeid.TrustDomain, ids map[string]string) ([]Entry, error) {
	d := decoder{file: name}
	m, err := d.root(data)
	if err != nil || m == nil {
		return nil, err
	}
	var out []Entry
	err = d.fields(m, "", map[string]func(v *yaml.Node) error{
		"entries": func(v *yaml.Node) error {
			var err error
			out, err = d.entries(v, td, ids)
			return err
		},
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (d decoder) entries(v *yaml.Node, td spiffeid.TrustDomain, ids map[string]string) ([]Entry, error) {
	if isNull(v) {
		return nil, nil
	}
	if v.Kind != yaml.SequenceNode {
		return nil, d.errf(v, "entries", "want a list of entries, got %s", kindName(v))
	}
	out := make([]Entry, 0, len(v.Content))
	for i, n := range v.Content {
		e, err := d.entry(n, fmt.Sprintf("entries[%d]", i), td, ids)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

func (d decoder) entry(n *yaml.Node, field string, td spiffeid.TrustDomain, ids map[string]string) (Entry, error) {
	e := Entry{X509TTL: Duration(DefaultX509TTL), JWTTTL: Duration(DefaultJWTTTL), Pos: fmt.Sprintf("%s:%d", d.file, n.Line)}
	if n.Kind != yaml.MappingNode {
		return Entry{}, d.errf(n, field, "want a mapping with spiffe_id and selectors, got %s", kindName(n))
	}
	var idNode, selNode *yaml.Node
	err := d.fields(n, field, map[string]func(v *yaml.Node) error{
		"id": func(v *yaml.Node) error {
			if err := d.text(v, field+".id", &e.ID); err != nil {
				return err
			}
			if e.ID == "" {
				return d.errf(v, field+".id", "must not be empty (leave it out to have one derived)")
			}
			if first, dup := ids[e.ID]; dup {
				return d.errf(v, field+".id", "duplicate id %s (first at %s)", quote(e.ID), first)
			}
			ids[e.ID] = e.Pos
			return nil
		},
		"spiffe_id": func(v *yaml.Node) error {
			idNode = v
			return d.str(v, field+".spiffe_id", &e.SPIFFEID)
		},
		"selectors": func(v *yaml.Node) error {
			selNode = v
			if err := d.strList(v, field+".selectors", &e.Selectors); err != nil {
				return err
			}
			for i, s := range e.Selectors {
				sel, err := selector.Parse(s)
				if err != nil {
					return d.wrapf(v.Content[i], fmt.Sprintf("%s.selectors[%d]", field, i), err, "%v", err)
				}
				e.ParsedSelectors = append(e.ParsedSelectors, sel)
			}
			return nil
		},
		"x509_ttl": func(v *yaml.Node) error { return d.duration(v, field+".x509_ttl", &e.X509TTL) },
		"jwt_ttl":  func(v *yaml.Node) error { return d.duration(v, field+".jwt_ttl", &e.JWTTTL) },
		"dns_names": func(v *yaml.Node) error {
			if err := d.strList(v, field+".dns_names", &e.DNSNames); err != nil {
				return err
			}
			for i, name := range e.DNSNames {
				if !dnsname.Valid(name) {
					return d.errf(v.Content[i], fmt.Sprintf("%s.dns_names[%d]", field, i), "invalid DNS name %s", quote(name))
				}
			}
			return nil
		},
		"federates_with": func(v *yaml.Node) error {
			return d.entryFederatesWith(v, field+".federates_with", td, &e)
		},
		"hint":  func(v *yaml.Node) error { return d.text(v, field+".hint", &e.Hint) },
		"owner": func(v *yaml.Node) error { return d.text(v, field+".owner", &e.Owner) },
		"expires": func(v *yaml.Node) error {
			var raw string
			if err := d.str(v, field+".expires", &raw); err != nil {
				return err
			}
			for _, layout := range []string{time.RFC3339, time.DateOnly} {
				if t, err := time.Parse(layout, raw); err == nil {
					e.Expires = t
					return nil
				}
			}
			return d.errf(v, field+".expires", "invalid date %s: want YYYY-MM-DD or RFC 3339", quote(raw))
		},
	})
	if err != nil {
		return Entry{}, err
	}
	if idNode == nil {
		return Entry{}, d.errf(n, field, "spiffe_id is required")
	}
	if e.ParsedID, err = d.spiffeID(idNode, field+".spiffe_id", e.SPIFFEID, td); err != nil {
		return Entry{}, err
	}
	if len(e.ParsedSelectors) == 0 {
		at := selNode
		if at == nil {
			at = n
		}
		return Entry{}, d.errf(at, field+".selectors", "at least one selector is required (an entry without selectors would match every process)")
	}
	return e, nil
}

// spiffeID parses a workload SPIFFE ID: well formed, with a path, and in td
// unless td is zero.
func (d decoder) spiffeID(v *yaml.Node, field, s string, td spiffeid.TrustDomain) (spiffeid.ID, error) {
	if len(s) > maxSPIFFEID {
		return spiffeid.ID{}, d.errf(v, field, "longer than %d bytes", maxSPIFFEID)
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, d.wrapf(v, field, err, "invalid SPIFFE ID %s: %v", quote(s), err)
	}
	if id.Path() == "" {
		return spiffeid.ID{}, d.errf(v, field, "%s has no path: a workload ID needs one", quote(s))
	}
	if !td.IsZero() && id.TrustDomain() != td {
		return spiffeid.ID{}, d.errf(v, field, "%s is outside trust domain %s", quote(s), td.Name())
	}
	return id, nil
}
