package config

import (
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"gopkg.in/yaml.v3"
)

// Federation profiles (SPIFFE Trust Domain and Bundle, section 5.2).
const (
	ProfileHTTPSSPIFFE = "https_spiffe"
	ProfileHTTPSWeb    = "https_web"
)

// DefaultRefreshHint is federation.bundle_endpoint.refresh_hint when unset.
const DefaultRefreshHint = 5 * time.Minute

// MaxFederatesWith bounds the federation.federates_with trust domains.
const MaxFederatesWith = 64

// Federation is the `federation:` section (standalone mode only).
type Federation struct {
	// BundleEndpoint serves this trust domain's bundle; nil: not served.
	BundleEndpoint *BundleEndpoint
	// FederatesWith are the foreign trust domains whose bundles are
	// fetched, sorted by trust domain name.
	FederatesWith []FederatesWith
}

// BundleEndpoint is `federation.bundle_endpoint`.
type BundleEndpoint struct {
	// Listen is the host:port of the HTTPS server. It may be any address:
	// a bundle endpoint is public by design.
	Listen string
	// Profile is https_spiffe (default: the endpoint presents an
	// X509-SVID of this trust domain) or https_web (Cert and Key).
	Profile string
	// Cert and Key are the web PKI certificate chain and key (https_web).
	Cert, Key string
	// RefreshHint is the spiffe_refresh_hint published (default 5m).
	RefreshHint Duration
}

// FederatesWith is one `federation.federates_with` trust domain.
type FederatesWith struct {
	TrustDomain spiffeid.TrustDomain
	// URL is the foreign bundle endpoint (https).
	URL string
	// Profile is https_spiffe or https_web.
	Profile string
	// EndpointSPIFFEID is the SPIFFE ID the endpoint must present
	// (https_spiffe; in TrustDomain).
	EndpointSPIFFEID spiffeid.ID
	// Bundle is the bootstrap bundle file (https_spiffe): SPIFFE bundle
	// JSON or PEM certificates.
	Bundle string
	// CA is an optional PEM file of web PKI roots used instead of the
	// system's (https_web).
	CA string
	// Pos is "file:line" of the trust domain's key.
	Pos string
}

// fedRef records where an entry named a federated trust domain, so that the
// name can be checked against the federation section once both are parsed.
type fedRef struct {
	file, field string
	line        int
}

// federation decodes the federation section; td is the own trust domain.
func (d decoder) federation(v *yaml.Node, td spiffeid.TrustDomain) (*Federation, error) {
	if v.Kind != yaml.MappingNode {
		return nil, d.errf(v, "federation", "want a mapping (bundle_endpoint, federates_with), got %s", kindName(v))
	}
	f := &Federation{}
	err := d.fields(v, "federation", map[string]func(v *yaml.Node) error{
		"bundle_endpoint": func(v *yaml.Node) error {
			var err error
			f.BundleEndpoint, err = d.bundleEndpoint(v)
			return err
		},
		"federates_with": func(v *yaml.Node) error {
			var err error
			f.FederatesWith, err = d.federatesWith(v, td)
			return err
		},
	})
	if err != nil {
		return nil, err
	}
	return f, nil
}

func (d decoder) bundleEndpoint(v *yaml.Node) (*BundleEndpoint, error) {
	const where = "federation.bundle_endpoint"
	if v.Kind != yaml.MappingNode {
		return nil, d.errf(v, where, "want a mapping (listen, profile, ...), got %s", kindName(v))
	}
	b := &BundleEndpoint{Profile: ProfileHTTPSSPIFFE, RefreshHint: Duration(DefaultRefreshHint)}
	var certNode, keyNode *yaml.Node
	err := d.fields(v, where, map[string]func(v *yaml.Node) error{
		"listen": func(v *yaml.Node) error {
			if err := d.str(v, where+".listen", &b.Listen); err != nil {
				return err
			}
			_, port, err := net.SplitHostPort(b.Listen)
			if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 0 || n > 65535 {
				return d.errf(v, where+".listen", "want host:port such as 0.0.0.0:8443, got %s", quote(b.Listen))
			}
			return nil
		},
		"profile": func(v *yaml.Node) error { return d.profile(v, where+".profile", &b.Profile) },
		"cert":    func(v *yaml.Node) error { certNode = v; return d.absPath(v, where+".cert", &b.Cert) },
		"key":     func(v *yaml.Node) error { keyNode = v; return d.absPath(v, where+".key", &b.Key) },
		"refresh_hint": func(v *yaml.Node) error {
			if err := d.duration(v, where+".refresh_hint", &b.RefreshHint); err != nil {
				return err
			}
			if b.RefreshHint < Duration(10*time.Second) || b.RefreshHint > Duration(24*time.Hour) {
				return d.errf(v, where+".refresh_hint", "want a duration from 10s to 24h, got %s", time.Duration(b.RefreshHint))
			}
			return nil
		},
	})
	if err != nil {
		return nil, err
	}
	switch {
	case b.Listen == "":
		return nil, d.errf(v, where+".listen", "missing: the host:port to serve the bundle on, such as 0.0.0.0:8443")
	case b.Profile == ProfileHTTPSWeb && (b.Cert == "" || b.Key == ""):
		return nil, d.errf(v, where, "profile https_web needs cert and key (the endpoint's web PKI certificate)")
	case b.Profile == ProfileHTTPSSPIFFE && certNode != nil:
		return nil, d.errf(certNode, where+".cert", "only with profile https_web (https_spiffe presents an X509-SVID of this trust domain)")
	case b.Profile == ProfileHTTPSSPIFFE && keyNode != nil:
		return nil, d.errf(keyNode, where+".key", "only with profile https_web (https_spiffe presents an X509-SVID of this trust domain)")
	}
	return b, nil
}

func (d decoder) profile(v *yaml.Node, field string, dst *string) error {
	if err := d.str(v, field, dst); err != nil {
		return err
	}
	if *dst != ProfileHTTPSSPIFFE && *dst != ProfileHTTPSWeb {
		return d.errf(v, field, "want https_spiffe or https_web, got %s", quote(*dst))
	}
	return nil
}

func (d decoder) federatesWith(v *yaml.Node, own spiffeid.TrustDomain) ([]FederatesWith, error) {
	const where = "federation.federates_with"
	if isNull(v) {
		return nil, nil
	}
	if v.Kind != yaml.MappingNode {
		return nil, d.errf(v, where, "want a mapping of trust domain names (other.org: {url, profile, ...}), got %s", kindName(v))
	}
	if n := len(v.Content) / 2; n > MaxFederatesWith {
		return nil, d.errf(v, where, "%d trust domains, at most %d", n, MaxFederatesWith)
	}
	var out []FederatesWith
	known := map[string]func(v *yaml.Node) error{}
	for i := 0; i+1 < len(v.Content); i += 2 {
		k := v.Content[i]
		if k.Kind != yaml.ScalarNode {
			return nil, d.errf(k, where, "keys must be trust domain names")
		}
		known[k.Value] = func(val *yaml.Node) error {
			field := where + "." + k.Value
			td, err := spiffeid.TrustDomainFromString(k.Value)
			if err != nil || td.Name() != k.Value {
				return d.errf(k, where, "invalid trust domain name %s (want a name such as other.org)", quote(k.Value))
			}
			if td == own {
				return d.errf(k, field, "is this agent's own trust domain")
			}
			fw, err := d.federatedTD(val, field, td)
			if err != nil {
				return err
			}
			fw.Pos = fmt.Sprintf("%s:%d", d.file, k.Line)
			out = append(out, fw)
			return nil
		}
	}
	// fields reports duplicate keys; every key is known here.
	if err := d.fields(v, where, known); err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b FederatesWith) int { return compareStrings(a.TrustDomain.Name(), b.TrustDomain.Name()) })
	return out, nil
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (d decoder) federatedTD(v *yaml.Node, field string, td spiffeid.TrustDomain) (FederatesWith, error) {
	fw := FederatesWith{TrustDomain: td}
	if v.Kind != yaml.MappingNode {
		return fw, d.errf(v, field, "want a mapping (url, profile, ...), got %s", kindName(v))
	}
	var idNode, bundleNode, caNode, profileNode *yaml.Node
	err := d.fields(v, field, map[string]func(v *yaml.Node) error{
		"url": func(v *yaml.Node) error {
			if err := d.str(v, field+".url", &fw.URL); err != nil {
				return err
			}
			u, err := url.Parse(fw.URL)
			if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.Fragment != "" {
				return d.errf(v, field+".url", "want an https URL without user or fragment, such as https://other.example:8443, got %s", quote(fw.URL))
			}
			return nil
		},
		"profile": func(v *yaml.Node) error { profileNode = v; return d.profile(v, field+".profile", &fw.Profile) },
		"endpoint_spiffe_id": func(v *yaml.Node) error {
			idNode = v
			var s string
			if err := d.str(v, field+".endpoint_spiffe_id", &s); err != nil {
				return err
			}
			id, err := d.spiffeID(v, field+".endpoint_spiffe_id", s, td)
			fw.EndpointSPIFFEID = id
			return err
		},
		"bundle": func(v *yaml.Node) error { bundleNode = v; return d.absPath(v, field+".bundle", &fw.Bundle) },
		"ca":     func(v *yaml.Node) error { caNode = v; return d.absPath(v, field+".ca", &fw.CA) },
	})
	if err != nil {
		return fw, err
	}
	switch {
	case fw.URL == "":
		return fw, d.errf(v, field+".url", "missing: the trust domain's bundle endpoint URL")
	case profileNode == nil:
		return fw, d.errf(v, field+".profile", "missing: https_spiffe or https_web")
	case fw.Profile == ProfileHTTPSSPIFFE && idNode == nil:
		return fw, d.errf(v, field+".endpoint_spiffe_id", "missing: profile https_spiffe needs the endpoint's SPIFFE ID")
	case fw.Profile == ProfileHTTPSSPIFFE && bundleNode == nil:
		return fw, d.errf(v, field+".bundle", "missing: profile https_spiffe needs a bootstrap bundle of the trust domain (SPIFFE bundle JSON or PEM)")
	case fw.Profile == ProfileHTTPSSPIFFE && caNode != nil:
		return fw, d.errf(caNode, field+".ca", "only with profile https_web (https_spiffe authenticates the endpoint with the trust domain's bundle)")
	case fw.Profile == ProfileHTTPSWeb && idNode != nil:
		return fw, d.errf(idNode, field+".endpoint_spiffe_id", "only with profile https_spiffe (https_web authenticates the endpoint by web PKI)")
	case fw.Profile == ProfileHTTPSWeb && bundleNode != nil:
		return fw, d.errf(bundleNode, field+".bundle", "only with profile https_spiffe (https_web needs no bootstrap bundle)")
	}
	return fw, nil
}

// entryFederatesWith decodes an entry's federates_with list: trust domain
// names, never the own trust domain (td, when not zero). Whether each is
// configured in the federation section is checked by checkFederatesWith.
func (d decoder) entryFederatesWith(v *yaml.Node, field string, td spiffeid.TrustDomain, e *Entry) error {
	var names []string
	if err := d.strList(v, field, &names); err != nil {
		return err
	}
	for i, name := range names {
		f := fmt.Sprintf("%s[%d]", field, i)
		n := v.Content[i]
		ftd, err := spiffeid.TrustDomainFromString(name)
		if err != nil || ftd.Name() != name {
			return d.errf(n, f, "invalid trust domain name %s (want a name such as other.org)", quote(name))
		}
		if !td.IsZero() && ftd == td {
			return d.errf(n, f, "%s is this agent's own trust domain", quote(name))
		}
		if slices.Contains(e.FederatesWith, ftd) {
			return d.errf(n, f, "%s listed twice", quote(name))
		}
		e.FederatesWith = append(e.FederatesWith, ftd)
		e.federatesAt = append(e.federatesAt, fedRef{file: d.file, field: f, line: n.Line})
	}
	return nil
}

// checkFederatesWith checks that every trust domain an entry federates with
// is configured under federation.federates_with.
func checkFederatesWith(entries []Entry, fed *Federation) error {
	known := map[spiffeid.TrustDomain]bool{}
	if fed != nil {
		for _, fw := range fed.FederatesWith {
			known[fw.TrustDomain] = true
		}
	}
	for _, e := range entries {
		for i, td := range e.FederatesWith {
			if known[td] {
				continue
			}
			at := e.federatesAt[i]
			return &posError{file: at.file, line: at.line, field: at.field,
				msg: fmt.Sprintf("%s is not configured under federation.federates_with", quote(td.Name()))}
		}
	}
	return nil
}
