package config

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const fedOK = `trust_domain: example.org
federation:
  bundle_endpoint:
    listen: 0.0.0.0:8443
    profile: https_web
    cert: /etc/nodeward/bundle-endpoint.crt
    key: /etc/nodeward/bundle-endpoint.key
    refresh_hint: 2m
  federates_with:
    other.org:
      url: https://other.example:8443
      profile: https_spiffe
      endpoint_spiffe_id: spiffe://other.org/nodeward/bundle-endpoint
      bundle: /etc/nodeward/other.org.bundle
    cloud.example:
      url: https://bundles.cloud.example/
      profile: https_web
      ca: /etc/nodeward/web-ca.pem
entries:
  - spiffe_id: spiffe://example.org/web
    selectors: [unix:uid:1000]
    federates_with: [other.org, cloud.example]
`

func TestFederationSection(t *testing.T) {
	cfg, err := Parse("agent.yaml", []byte(fedOK))
	if err != nil {
		t.Fatal(err)
	}
	f := cfg.Federation
	if f == nil || f.BundleEndpoint == nil {
		t.Fatalf("federation = %+v", f)
	}
	if b := f.BundleEndpoint; b.Listen != "0.0.0.0:8443" || b.Profile != ProfileHTTPSWeb || b.Cert != "/etc/nodeward/bundle-endpoint.crt" ||
		b.Key != "/etc/nodeward/bundle-endpoint.key" || time.Duration(b.RefreshHint) != 2*time.Minute {
		t.Errorf("bundle_endpoint = %+v", b)
	}
	if len(f.FederatesWith) != 2 {
		t.Fatalf("federates_with = %+v", f.FederatesWith)
	}
	cloud, other := f.FederatesWith[0], f.FederatesWith[1] // sorted by name
	if cloud.TrustDomain.Name() != "cloud.example" || cloud.Profile != ProfileHTTPSWeb || cloud.CA != "/etc/nodeward/web-ca.pem" ||
		cloud.URL != "https://bundles.cloud.example/" || !cloud.EndpointSPIFFEID.IsZero() || cloud.Pos != "agent.yaml:15" {
		t.Errorf("cloud.example = %+v", cloud)
	}
	if other.TrustDomain.Name() != "other.org" || other.Profile != ProfileHTTPSSPIFFE ||
		other.EndpointSPIFFEID.String() != "spiffe://other.org/nodeward/bundle-endpoint" || other.Bundle != "/etc/nodeward/other.org.bundle" {
		t.Errorf("other.org = %+v", other)
	}
	e := cfg.Entries[0]
	if len(e.FederatesWith) != 2 || e.FederatesWith[0].Name() != "other.org" || e.FederatesWith[1].Name() != "cloud.example" {
		t.Errorf("entry federates_with = %v", e.FederatesWith)
	}

	// Defaults: profile https_spiffe, refresh hint 5m; no federation: nil.
	cfg, err = Parse("agent.yaml", []byte("federation:\n  bundle_endpoint:\n    listen: 127.0.0.1:0\n"))
	if err != nil {
		t.Fatal(err)
	}
	if b := cfg.Federation.BundleEndpoint; b.Profile != ProfileHTTPSSPIFFE || time.Duration(b.RefreshHint) != DefaultRefreshHint || cfg.Federation.FederatesWith != nil {
		t.Errorf("defaults = %+v", cfg.Federation)
	}
	if cfg, err := Parse("agent.yaml", []byte("trust_domain: example.org\n")); err != nil || cfg.Federation != nil {
		t.Errorf("no section: %+v, %v", cfg.Federation, err)
	}
}

// TestFederationErrors holds the exact messages (golden).
func TestFederationErrors(t *testing.T) {
	const td = "trust_domain: example.org\n"
	const spiffeOther = "    other.org:\n      url: https://o:8443\n      profile: https_spiffe\n      endpoint_spiffe_id: spiffe://other.org/be\n      bundle: /b.json\n"
	tests := []struct{ name, yaml, want string }{
		{"not a mapping", td + "federation: [a]\n",
			`agent.yaml:2: federation: want a mapping (bundle_endpoint, federates_with), got a list`},
		{"unknown key", td + "federation:\n  federate_with: {}\n",
			`agent.yaml:3: unknown key "federate_with" in federation`},
		{"no listen", td + "federation:\n  bundle_endpoint:\n    profile: https_spiffe\n",
			`agent.yaml:4: federation.bundle_endpoint.listen: missing: the host:port to serve the bundle on, such as 0.0.0.0:8443`},
		{"bad listen", td + "federation:\n  bundle_endpoint:\n    listen: 8443\n",
			`agent.yaml:4: federation.bundle_endpoint.listen: want host:port such as 0.0.0.0:8443, got "8443"`},
		{"bad profile", td + "federation:\n  bundle_endpoint:\n    listen: :8443\n    profile: https\n",
			`agent.yaml:5: federation.bundle_endpoint.profile: want https_spiffe or https_web, got "https"`},
		{"web without cert", td + "federation:\n  bundle_endpoint:\n    listen: :8443\n    profile: https_web\n",
			`agent.yaml:4: federation.bundle_endpoint: profile https_web needs cert and key (the endpoint's web PKI certificate)`},
		{"spiffe with cert", td + "federation:\n  bundle_endpoint:\n    listen: :8443\n    cert: /c.pem\n",
			`agent.yaml:5: federation.bundle_endpoint.cert: only with profile https_web (https_spiffe presents an X509-SVID of this trust domain)`},
		{"relative key", td + "federation:\n  bundle_endpoint:\n    listen: :8443\n    profile: https_web\n    cert: /c.pem\n    key: k.pem\n",
			`agent.yaml:7: federation.bundle_endpoint.key: want an absolute file path, got "k.pem"`},
		{"hint too short", td + "federation:\n  bundle_endpoint:\n    listen: :8443\n    refresh_hint: 1s\n",
			`agent.yaml:5: federation.bundle_endpoint.refresh_hint: want a duration from 10s to 24h, got 1s`},
		{"hint without unit", td + "federation:\n  bundle_endpoint:\n    listen: :8443\n    refresh_hint: 300\n",
			`agent.yaml:5: federation.bundle_endpoint.refresh_hint: invalid duration "300": give a unit, such as 1h or 300s`},
		{"federates_with list", td + "federation:\n  federates_with: [other.org]\n",
			`agent.yaml:3: federation.federates_with: want a mapping of trust domain names (other.org: {url, profile, ...}), got a list`},
		{"bad td name", td + "federation:\n  federates_with:\n    Other.Org:\n      url: https://o\n      profile: https_web\n",
			`agent.yaml:4: federation.federates_with: invalid trust domain name "Other.Org" (want a name such as other.org)`},
		{"own td", td + "federation:\n  federates_with:\n    example.org:\n      url: https://o\n      profile: https_web\n",
			`agent.yaml:4: federation.federates_with.example.org: is this agent's own trust domain`},
		{"duplicate td", td + "federation:\n  federates_with:\n" + spiffeOther + spiffeOther,
			`agent.yaml:9: duplicate key "other.org" in federation.federates_with`},
		{"no url", td + "federation:\n  federates_with:\n    other.org:\n      profile: https_web\n",
			`agent.yaml:5: federation.federates_with.other.org.url: missing: the trust domain's bundle endpoint URL`},
		{"http url", td + "federation:\n  federates_with:\n    other.org:\n      url: http://o:8443\n      profile: https_web\n",
			`agent.yaml:5: federation.federates_with.other.org.url: want an https URL without user or fragment, such as https://other.example:8443, got "http://o:8443"`},
		{"no profile", td + "federation:\n  federates_with:\n    other.org:\n      url: https://o:8443\n",
			`agent.yaml:5: federation.federates_with.other.org.profile: missing: https_spiffe or https_web`},
		{"spiffe without id", td + "federation:\n  federates_with:\n    other.org:\n      url: https://o:8443\n      profile: https_spiffe\n      bundle: /b.json\n",
			`agent.yaml:5: federation.federates_with.other.org.endpoint_spiffe_id: missing: profile https_spiffe needs the endpoint's SPIFFE ID`},
		{"spiffe without bundle", td + "federation:\n  federates_with:\n    other.org:\n      url: https://o:8443\n      profile: https_spiffe\n      endpoint_spiffe_id: spiffe://other.org/be\n",
			`agent.yaml:5: federation.federates_with.other.org.bundle: missing: profile https_spiffe needs a bootstrap bundle of the trust domain (SPIFFE bundle JSON or PEM)`},
		{"endpoint id in another td", td + "federation:\n  federates_with:\n    other.org:\n      url: https://o:8443\n      profile: https_spiffe\n      endpoint_spiffe_id: spiffe://third.org/be\n      bundle: /b.json\n",
			`agent.yaml:7: federation.federates_with.other.org.endpoint_spiffe_id: "spiffe://third.org/be" is outside trust domain other.org`},
		{"web with bundle", td + "federation:\n  federates_with:\n    other.org:\n      url: https://o:8443\n      profile: https_web\n      bundle: /b.json\n",
			`agent.yaml:7: federation.federates_with.other.org.bundle: only with profile https_spiffe (https_web needs no bootstrap bundle)`},
		{"web with endpoint id", td + "federation:\n  federates_with:\n    other.org:\n      url: https://o:8443\n      profile: https_web\n      endpoint_spiffe_id: spiffe://other.org/be\n",
			`agent.yaml:7: federation.federates_with.other.org.endpoint_spiffe_id: only with profile https_spiffe (https_web authenticates the endpoint by web PKI)`},
		{"spiffe with ca", td + "federation:\n  federates_with:\n" + spiffeOther + "      ca: /ca.pem\n",
			`agent.yaml:9: federation.federates_with.other.org.ca: only with profile https_web (https_spiffe authenticates the endpoint with the trust domain's bundle)`},
		{"unknown peer key", td + "federation:\n  federates_with:\n    other.org:\n      uri: https://o\n",
			`agent.yaml:5: unknown key "uri" in federation.federates_with.other.org`},
		{"entry names unconfigured td", td + "federation:\n  federates_with:\n" + spiffeOther +
			"entries:\n  - spiffe_id: spiffe://example.org/a\n    selectors: [unix:uid:1]\n    federates_with: [other.org, third.org]\n",
			`agent.yaml:12: entries[0].federates_with[1]: "third.org" is not configured under federation.federates_with`},
		{"entry without federation section", td + "entries:\n  - spiffe_id: spiffe://example.org/a\n    selectors: [unix:uid:1]\n    federates_with:\n      - other.org\n",
			`agent.yaml:6: entries[0].federates_with[0]: "other.org" is not configured under federation.federates_with`},
		{"entry names own td", td + "entries:\n  - spiffe_id: spiffe://example.org/a\n    selectors: [unix:uid:1]\n    federates_with: [example.org]\n",
			`agent.yaml:5: entries[0].federates_with[0]: "example.org" is this agent's own trust domain`},
		{"entry names td twice", td + "federation:\n  federates_with:\n" + spiffeOther +
			"entries:\n  - spiffe_id: spiffe://example.org/a\n    selectors: [unix:uid:1]\n    federates_with: [other.org, other.org]\n",
			`agent.yaml:12: entries[0].federates_with[1]: "other.org" listed twice`},
		{"entry bad td", td + "entries:\n  - spiffe_id: spiffe://example.org/a\n    selectors: [unix:uid:1]\n    federates_with: [spiffe://other.org]\n",
			`agent.yaml:5: entries[0].federates_with[0]: invalid trust domain name "spiffe://other.org" (want a name such as other.org)`},
		{"fleet mode", serverOK + "federation:\n  bundle_endpoint:\n    listen: :8443\n",
			"agent.yaml:8: federation: not used with a server section"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("agent.yaml", []byte(tt.yaml))
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("err = %v\nwant %s", err, tt.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("%v does not wrap ErrInvalid", err)
			}
		})
	}
}

// TestEntriesFileFederatesWith: an entries_file's entries are checked
// against the config's federation section, naming the entries file's line.
func TestEntriesFileFederatesWith(t *testing.T) {
	files := map[string]string{"/etc/nodeward/entries.yaml": "entries:\n  - spiffe_id: spiffe://example.org/b\n    selectors: [unix:uid:2]\n    federates_with: [nowhere.org]\n"}
	read := func(p string) ([]byte, error) { return []byte(files[p]), nil }
	_, err := parse("/etc/nodeward/agent.yaml", []byte("trust_domain: example.org\nentries_file: entries.yaml\n"), read)
	want := `/etc/nodeward/entries.yaml:4: entries[0].federates_with[0]: "nowhere.org" is not configured under federation.federates_with`
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant %s", err, want)
	}
	// `nodeward entries check` has no federation section to check against.
	if _, err := parseEntriesFile("e.yaml", []byte(files["/etc/nodeward/entries.yaml"]), spiffeid.TrustDomain{}, map[string]string{}); err != nil {
		t.Fatal(err)
	}
}
