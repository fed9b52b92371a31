package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/nodeward/nodeward/attestors/selector"
)

// entry0 starts an entries list whose first entry is valid; lines 1-3.
const entry0 = "entries:\n  - spiffe_id: spiffe://nodeward.local/a\n    selectors: [unix:uid:1]\n"

// TestErrorsGolden checks the exact message of each kind of error: users
// script against "FILE:LINE: FIELD: message".
func TestErrorsGolden(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want string
		is   error // besides ErrInvalid
	}{
		// Keys.
		{"unknown top key", "trust_domain: example.org\nsocket_path: /run/x.sock\nlog_level: info\ntrust_domian: x\n",
			`agent.yaml:4: unknown key "trust_domian"`, ErrUnknownKey},
		{"unknown entry key", entry0 + "    ttl: 1h\n",
			`agent.yaml:4: unknown key "ttl" in entries[0]`, ErrUnknownKey},
		{"unknown guardrails key", "guardrails:\n  max_ttl: 1h\n",
			`agent.yaml:2: unknown key "max_ttl" in guardrails`, ErrUnknownKey},
		{"duplicate top key", "trust_domain: a.org\nlog_level: info\ntrust_domain: b.org\n",
			`agent.yaml:3: duplicate key "trust_domain"`, nil},
		{"duplicate entry key", entry0 + "    selectors: [unix:uid:2]\n",
			`agent.yaml:4: duplicate key "selectors" in entries[0]`, nil},
		{"non-string key", "[a]: 1\n",
			`agent.yaml:1: keys must be plain strings`, nil},

		// Limits.
		{"unknown limits key", "limits:\n  max_conn: 1\n",
			`agent.yaml:2: unknown key "max_conn" in limits`, ErrUnknownKey},
		{"limits not a mapping", "limits: 5\n",
			`agent.yaml:1: limits: want a mapping, got "5"`, nil},
		{"limits zero count", "limits:\n  max_conns_per_uid: 0\n",
			`agent.yaml:2: limits.max_conns_per_uid: want an integer from 1 to 1048576, got "0"`, nil},
		{"limits count not int", "limits:\n  max_streams: lots\n",
			`agent.yaml:2: limits.max_streams: want an integer from 1 to 1048576, got "lots"`, nil},
		{"limits negative rate", "limits:\n  rate: -1\n",
			`agent.yaml:2: limits.rate: want calls per second from 0 (unlimited) to 1048576, got "-1"`, nil},
		{"limits bad size", "limits:\n  jwt_cache_bytes: 4MB\n",
			`agent.yaml:2: limits.jwt_cache_bytes: want a size from 64KiB to 1GiB such as 4MiB, got "4MB"`, nil},
		{"limits tiny size", "limits:\n  jwt_cache_bytes: 1KiB\n",
			`agent.yaml:2: limits.jwt_cache_bytes: want a size from 64KiB to 1GiB such as 4MiB, got "1KiB"`, nil},
		{"limits idle without unit", "limits:\n  idle_timeout: 300\n",
			`agent.yaml:2: limits.idle_timeout: invalid duration "300": give a unit, such as 1h or 300s`, nil},

		// Documents and syntax.
		{"two documents", "trust_domain: a.org\n---\ntrust_domain: b.org\n",
			`agent.yaml:2: more than one YAML document (a second "---")`, nil},
		{"trailing document marker", "trust_domain: a.org\nlog_level: info\n---\n",
			`agent.yaml:3: more than one YAML document (a second "---")`, nil},
		{"syntax", "log_level: info\ntrust_domain: [\n",
			`agent.yaml:2: invalid YAML: did not find expected node content`, nil},
		{"unclosed flow list", "entries:\n  - spiffe_id: spiffe://nodeward.local/a\n    selectors: [unix:uid:1\n  - spiffe_id: spiffe://nodeward.local/b\n",
			`agent.yaml:3: invalid YAML: did not find expected ',' or ']'`, nil},
		// yaml.v3 names the start of the block the bad line breaks.
		{"bad block indentation", "log_level: info\nentries:\n  - spiffe_id: spiffe://nodeward.local/a\n    selectors:\n      - unix:uid:1\n   hint: x\n",
			`agent.yaml:3: invalid YAML: did not find expected '-' indicator`, nil},
		{"key outdented", "log_level: info\nguardrails:\n  require_owner: true\n  max_x509_ttl: 24h\n require_expires: true\n",
			`agent.yaml:5: invalid YAML: did not find expected key`, nil},
		{"sequence item then key", "- a\nb: 1\n",
			`agent.yaml:2: invalid YAML: did not find expected '-' indicator`, nil},
		{"unclosed flow list at end without newline", "log_level: info\ntrust_domain: [a",
			`agent.yaml:2: invalid YAML: did not find expected ',' or ']'`, nil},
		{"syntax on line 1", "a: b: c\n",
			`agent.yaml:1: invalid YAML: mapping values are not allowed in this context`, nil},
		{"bad indentation", "trust_domain: a.org\n  log_level: info\n",
			`agent.yaml:2: invalid YAML: mapping values are not allowed in this context`, nil},
		{"invalid UTF-8", "trust_domain: a.org\nlog_level: info\nhint: \xff\n",
			`agent.yaml:3: invalid YAML: invalid leading UTF-8 octet`, nil},
		{"control character", "trust_domain: a.org\nlog_level: \x01\n",
			`agent.yaml:2: invalid YAML: control characters are not allowed`, nil},
		{"unknown anchor", "trust_domain: a.org\nlog_level: *lvl\n",
			`agent.yaml:2: invalid YAML: unknown anchor referenced`, nil},
		{"alias", "trust_domain: &td a.org\nentries:\n  - spiffe_id: spiffe://a.org/x\n    selectors: [*td]\n",
			`agent.yaml:4: YAML aliases (*name) are not supported: write the value out`, nil},
		{"scalar top", "just text\n",
			`agent.yaml:1: the top level must be a mapping of keys`, nil},
		{"list top", "- a\n",
			`agent.yaml:1: the top level must be a mapping of keys`, nil},

		// Types.
		{"map for list", "entries:\n  spiffe_id: x\n",
			`agent.yaml:2: entries: want a list of entries, got a mapping`, nil},
		{"string for list", "entries: web\n",
			`agent.yaml:1: entries: want a list of entries, got "web"`, nil},
		{"list for string", "trust_domain: [a]\n",
			`agent.yaml:1: trust_domain: want a string, got a list`, nil},
		{"null string", "data_dir:\n",
			`agent.yaml:1: data_dir: want a string, got nothing`, nil},
		{"map for selectors", "entries:\n  - spiffe_id: spiffe://nodeward.local/a\n    selectors:\n      unix: uid\n",
			`agent.yaml:4: entries[0].selectors: want a list, got a mapping`, nil},
		{"list in selectors", "entries:\n  - spiffe_id: spiffe://nodeward.local/a\n    selectors: [[unix:uid:1]]\n",
			`agent.yaml:3: entries[0].selectors[0]: want a string, got a list`, nil},
		{"entry not a mapping", "entries:\n  - spiffe://nodeward.local/a\n",
			`agent.yaml:2: entries[0]: want a mapping with spiffe_id and selectors, got "spiffe://nodeward.local/a"`, nil},
		{"guardrails not a mapping", "guardrails: strict\n",
			`agent.yaml:1: guardrails: want a mapping, got "strict"`, nil},
		{"bool", "guardrails:\n  require_owner: yes please\n",
			`agent.yaml:2: guardrails.require_owner: want true or false, got "yes please"`, nil},

		// Top-level values.
		{"bad trust domain", "socket_path: /run/x.sock\nlog_level: info\ntrust_domain: Example.ORG!\n",
			`agent.yaml:3: trust_domain: invalid trust domain "Example.ORG!": trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores`, nil},
		{"empty trust domain", "trust_domain: \"\"\n",
			`agent.yaml:1: trust_domain: invalid trust domain "": trust domain is missing`, nil},
		{"log level", "log_level: loud\n",
			`agent.yaml:1: log_level: unknown level "loud" (want debug, info, warn or error)`, nil},
		{"long value shortened", "log_level: " + strings.Repeat("x", 200) + "\n",
			`agent.yaml:1: log_level: unknown level "` + strings.Repeat("x", maxQuoted) + `"… (want debug, info, warn or error)`, nil},
		{"relative socket", "socket_path: run/x.sock\n",
			`agent.yaml:1: socket_path: must be an absolute path, got "run/x.sock"`, nil},
		{"long socket", "socket_path: /" + strings.Repeat("s", 107) + "\n",
			`agent.yaml:1: socket_path: longer than 107 bytes, the limit for a Unix socket path`, nil},
		{"empty data dir", "data_dir: \"\"\n",
			`agent.yaml:1: data_dir: must not be empty`, nil},
		{"admin listen without port", "admin_listen: 127.0.0.1\n",
			`agent.yaml:1: admin_listen: want host:port such as 127.0.0.1:9464 (or nothing to disable), got "127.0.0.1"`, nil},
		{"audit_log relative", "audit_log: audit.log\n",
			`agent.yaml:1: audit_log: want stdout, stderr, off or an absolute file path, got "audit.log"`, nil},
		{"max_procs negative", "max_procs: -2\n",
			`agent.yaml:1: max_procs: want an integer from 0 (all CPUs) to 1024`, nil},
		{"max_procs string", "max_procs: many\n",
			`agent.yaml:1: max_procs: want an integer from 0 (all CPUs) to 1024`, nil},
		{"jwt_issuer", "jwt_issuer: issuer.example\n",
			`agent.yaml:1: jwt_issuer: want an http(s) URL without query or fragment, got "issuer.example"`, nil},

		// Entries.
		{"bad selector", "trust_domain: example.org\nentries:\n  - spiffe_id: spiffe://example.org/a\n    selectors:\n      - unix:uid:1\n      - unix:uid\n",
			`agent.yaml:6: entries[0].selectors[1]: invalid selector "unix:uid": want type:key:value`, selector.ErrInvalid},
		{"bad selector in flow list", entry0 + "  - spiffe_id: spiffe://nodeward.local/b\n    selectors: [unix:uid:1, Unix:uid:2]\n",
			`agent.yaml:5: entries[1].selectors[1]: invalid selector "Unix:uid:2": type: character 'U' not allowed (want [a-z0-9_-])`, selector.ErrInvalid},
		{"bad duration", entry0 + "  - spiffe_id: spiffe://nodeward.local/b\n    selectors: [unix:uid:2]\n    jwt_ttl: 5m\n    x509_ttl: 1 hour\n",
			`agent.yaml:7: entries[1].x509_ttl: invalid duration "1 hour": want a duration such as 1h, 5m30s or 30d`, nil},
		{"bare integer duration", entry0 + "    jwt_ttl: 300\n",
			`agent.yaml:4: entries[0].jwt_ttl: invalid duration "300": give a unit, such as 1h or 300s`, nil},
		{"ttl too long", entry0 + "    x509_ttl: 8761h\n",
			`agent.yaml:4: entries[0].x509_ttl: duration "8761h" out of range: want more than 0s and at most 8760h (1 year)`, nil},
		{"zero ttl", entry0 + "    x509_ttl: 0s\n",
			`agent.yaml:4: entries[0].x509_ttl: duration "0s" out of range: want more than 0s and at most 8760h (1 year)`, nil},
		{"negative ttl", entry0 + "    jwt_ttl: -5m\n",
			`agent.yaml:4: entries[0].jwt_ttl: duration "-5m" out of range: want more than 0s and at most 8760h (1 year)`, nil},
		{"null ttl", entry0 + "    jwt_ttl:\n",
			`agent.yaml:4: entries[0].jwt_ttl: want a duration such as 1h or 5m, got nothing`, nil},
		{"foreign id", "entries:\n  - spiffe_id: spiffe://other.org/a\n    selectors: [unix:uid:1]\n",
			`agent.yaml:2: entries[0].spiffe_id: "spiffe://other.org/a" is outside trust domain nodeward.local`, nil},
		{"id without path", "entries:\n  - spiffe_id: spiffe://nodeward.local\n    selectors: [unix:uid:1]\n",
			`agent.yaml:2: entries[0].spiffe_id: "spiffe://nodeward.local" has no path: a workload ID needs one`, nil},
		{"unparseable id", "entries:\n  - spiffe_id: http://x/y\n    selectors: [unix:uid:1]\n",
			`agent.yaml:2: entries[0].spiffe_id: invalid SPIFFE ID "http://x/y": scheme is missing or invalid`, nil},
		{"missing id", "entries:\n  - selectors: [unix:uid:1]\n",
			`agent.yaml:2: entries[0]: spiffe_id is required`, nil},
		{"empty selectors", "entries:\n  - spiffe_id: spiffe://nodeward.local/a\n    selectors: []\n",
			`agent.yaml:3: entries[0].selectors: at least one selector is required (an entry without selectors would match every process)`, nil},
		{"no selectors key", "entries:\n  - spiffe_id: spiffe://nodeward.local/a\n",
			`agent.yaml:2: entries[0].selectors: at least one selector is required (an entry without selectors would match every process)`, nil},
		{"null selectors", "entries:\n  - spiffe_id: spiffe://nodeward.local/a\n    selectors:\n",
			`agent.yaml:3: entries[0].selectors: at least one selector is required (an entry without selectors would match every process)`, nil},
		{"bad dns", entry0 + "    dns_names: [ok.example, -bad]\n",
			`agent.yaml:4: entries[0].dns_names[1]: invalid DNS name "-bad"`, nil},
		{"ip as dns name", entry0 + "    dns_names:\n      - 10.0.0.1\n",
			`agent.yaml:5: entries[0].dns_names[0]: invalid DNS name "10.0.0.1"`, nil},
		{"control character in hint", entry0 + "    hint: \"a\\x01\"\n",
			`agent.yaml:4: entries[0].hint: contains a control character`, nil},
		{"empty id", entry0 + "    id: \"\"\n",
			`agent.yaml:4: entries[0].id: must not be empty (leave it out to have one derived)`, nil},
		{"duplicate id", "entries:\n  - id: web\n    spiffe_id: spiffe://nodeward.local/a\n    selectors: [unix:uid:1]\n  - spiffe_id: spiffe://nodeward.local/b\n    id: web\n    selectors: [unix:uid:2]\n",
			`agent.yaml:6: entries[1].id: duplicate id "web" (first at agent.yaml:2)`, nil},
		{"bad expires", entry0 + "    expires: next week\n",
			`agent.yaml:4: entries[0].expires: invalid date "next week": want YYYY-MM-DD or RFC 3339`, nil},
		{"missing entries file", "log_level: info\nentries_file: nope.yaml\n",
			`agent.yaml:2: entries_file: open nope.yaml: no such file or directory`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("agent.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatalf("accepted; want error %s", tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("error\n got %s\nwant %s", err, tt.want)
			}
			if !errors.Is(err, ErrInvalid) || (tt.is != nil && !errors.Is(err, tt.is)) {
				t.Errorf("errors.Is(%v, ErrInvalid / %v) = false", err, tt.is)
			}
			if tt.is != ErrUnknownKey && errors.Is(err, ErrUnknownKey) {
				t.Errorf("%v wraps ErrUnknownKey", err)
			}
		})
	}
}
