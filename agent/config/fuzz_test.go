package config

import (
	"errors"
	"io/fs"
	"os"
	"regexp"
	"testing"
	"time"
)

// fuzzEntries is the only file the fuzzed config can name as entries_file.
const fuzzEntries = "entries:\n  - id: f\n    spiffe_id: spiffe://example.org/f\n    selectors: [unix:uid:7]\n"

// errForm is what every error must look like: it names the file and a line.
var errForm = regexp.MustCompile(`^/cfg/(agent|entries)\.yaml:[1-9][0-9]*: `)

func FuzzParse(f *testing.F) {
	for _, p := range []string{"testdata/agent.yaml", "testdata/entries.yaml"} {
		seed, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(seed)
	}
	f.Add([]byte(entry0 + "    x509_ttl: 2h\n    dns_names: [a.example]\n    hint: h\n"))
	f.Add([]byte("trust_domain: example.org\nentries_file: entries.yaml\n"))
	f.Add([]byte("trust_domain: [\n"))
	f.Add([]byte("a: &x [1]\nb: *x\n"))
	f.Add([]byte("guardrails: {max_x509_ttl: 1h, require_owner: true}\n"))
	read := func(p string) ([]byte, error) {
		if p == "/cfg/entries.yaml" {
			return []byte(fuzzEntries), nil
		}
		return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := parse("/cfg/agent.yaml", data, read)
		if err != nil {
			if !errors.Is(err, ErrTooLarge) && !errForm.MatchString(err.Error()) {
				t.Fatalf("error without file and line: %v", err)
			}
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		td := cfg.TrustDomain
		for _, e := range cfg.Entries {
			if e.ParsedID.IsZero() || e.ParsedID.String() != e.SPIFFEID || e.ParsedID.TrustDomain().Name() != td || e.ParsedID.Path() == "" {
				t.Fatalf("entry with a bad parsed ID: %+v (trust domain %s)", e, td)
			}
			if len(e.ParsedSelectors) == 0 || len(e.ParsedSelectors) != len(e.Selectors) {
				t.Fatalf("entry without parsed selectors: %+v", e)
			}
			for i, s := range e.ParsedSelectors {
				if s.String() != e.Selectors[i] {
					t.Fatalf("selector %d: parsed %q from %q", i, s, e.Selectors[i])
				}
			}
			for _, ttl := range []Duration{e.X509TTL, e.JWTTTL} {
				if ttl <= 0 || time.Duration(ttl) > MaxTTL {
					t.Fatalf("entry TTL out of range: %+v", e)
				}
			}
			if !errForm.MatchString(e.Pos + ": ") {
				t.Fatalf("entry position %q", e.Pos)
			}
		}
	})
}
