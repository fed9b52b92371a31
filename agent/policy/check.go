package policy

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodeward/nodeward/attestors/selector"
)

// Severity of a Finding.
const (
	SeverityError   = "error"   // the policy is refused
	SeverityWarning = "warning" // reported; the policy loads
)

// Finding is one guardrail violation.
type Finding struct {
	Pos      string // "file:line" of the entry, when known
	Severity string
	Code     string // stable, for scripts: broad-selectors, ambiguous, ttl-too-long, ...
	SPIFFEID string
	Message  string
}

// String renders the finding as "pos: severity: code: message".
func (f Finding) String() string {
	pos := f.Pos
	if pos == "" {
		pos = "-"
	}
	return fmt.Sprintf("%s: %s: %s: %s", pos, f.Severity, f.Code, f.Message)
}

// CheckOptions are the guardrails' settings.
type CheckOptions struct {
	TrustDomain    spiffeid.TrustDomain // zero: not checked
	MaxX509TTL     time.Duration        // zero: not checked
	MaxJWTTTL      time.Duration
	RequireOwner   bool
	RequireExpires bool
	Now            time.Time
}

// broad reports whether a selector, alone or with other broad ones, would
// select a large, unrelated set of processes: groups, slices, QoS classes,
// runtimes, the root cgroup, root's uid, and node facts (tpm:…), which
// every process of the node has.
func broad(s selector.Selector) bool {
	if s.Type == "tpm" {
		return true
	}
	switch s.Type + ":" + s.Key {
	case "unix:gid", "unix:group", "unix:supplementary-gid", "systemd:slice", "systemd:user-slice",
		"k8s:qos", "container:runtime":
		return true
	case "unix:uid", "unix:user":
		return s.Value == "0" || s.Value == "root"
	case "cgroup:path":
		return s.Value == "/"
	}
	return false
}

// Check runs the guardrails over entries (as configured: IDs need not be
// filled in) and returns the findings, errors first, in entry order.
func Check(entries []*Entry, opts CheckOptions) []Finding {
	var out []Finding
	add := func(e *Entry, sev, code, format string, args ...any) {
		out = append(out, Finding{Pos: e.Pos, Severity: sev, Code: code, SPIFFEID: e.SPIFFEID.String(), Message: fmt.Sprintf(format, args...)})
	}
	for _, e := range entries {
		id := e.SPIFFEID.String()
		if len(e.Selectors) == 0 {
			add(e, SeverityError, "no-selectors", "%s has no selectors: it would match every process", id)
		} else if !slices.ContainsFunc(e.Selectors, func(s selector.Selector) bool { return !broad(s) }) {
			add(e, SeverityError, "broad-selectors", "%s has only broad selectors (%s): add one that names the workload (uid, path, unit, container, pod)",
				id, strings.Join(selector.Strings(e.Selectors), ", "))
		}
		if !opts.TrustDomain.IsZero() && e.SPIFFEID.TrustDomain() != opts.TrustDomain {
			add(e, SeverityError, "foreign-trust-domain", "%s is outside trust domain %s", id, opts.TrustDomain.Name())
		}
		if opts.MaxX509TTL > 0 && e.X509TTL > opts.MaxX509TTL {
			add(e, SeverityError, "ttl-too-long", "%s: x509_ttl %s is above the maximum %s", id, e.X509TTL, opts.MaxX509TTL)
		}
		if opts.MaxJWTTTL > 0 && e.JWTTTL > opts.MaxJWTTTL {
			add(e, SeverityError, "ttl-too-long", "%s: jwt_ttl %s is above the maximum %s", id, e.JWTTTL, opts.MaxJWTTTL)
		}
		if opts.RequireOwner && e.Owner == "" {
			add(e, SeverityError, "missing-owner", "%s has no owner (guardrails.require_owner)", id)
		}
		if opts.RequireExpires && e.ExpiresAt.IsZero() {
			add(e, SeverityError, "missing-expires", "%s has no expires date (guardrails.require_expires)", id)
		}
		if !opts.Now.IsZero() && e.Expired(opts.Now) {
			add(e, SeverityWarning, "expired", "%s expired at %s and no longer issues", id, e.ExpiresAt.UTC().Format(time.RFC3339))
		}
	}
	out = append(out, conflicts(entries)...)
	out = append(out, ambiguous(entries)...)
	// Errors first ("error" < "warning"), then in file order.
	slices.SortStableFunc(out, func(a, b Finding) int {
		if a.Severity != b.Severity {
			return strings.Compare(a.Severity, b.Severity)
		}
		fa, la := splitPos(a.Pos)
		fb, lb := splitPos(b.Pos)
		if fa != fb {
			return strings.Compare(fa, fb)
		}
		return la - lb
	})
	return out
}

// conflicts finds one SPIFFE ID configured twice with different settings.
func conflicts(entries []*Entry) []Finding {
	var out []Finding
	first := map[spiffeid.ID]*Entry{}
	for _, e := range entries {
		f, ok := first[e.SPIFFEID]
		if !ok {
			first[e.SPIFFEID] = e
			continue
		}
		if f.X509TTL != e.X509TTL || f.JWTTTL != e.JWTTTL || !slices.Equal(f.DNSNames, e.DNSNames) {
			out = append(out, Finding{Pos: e.Pos, Severity: SeverityError, Code: "conflicting-duplicate", SPIFFEID: e.SPIFFEID.String(),
				Message: fmt.Sprintf("%s is also configured at %s with other settings (x509_ttl, jwt_ttl or dns_names differ)", e.SPIFFEID, posOr(f))})
		}
	}
	return out
}

func posOr(e *Entry) string {
	if e.Pos != "" {
		return e.Pos
	}
	return "another entry"
}

// ambiguous finds entries whose selectors are a subset of another entry's
// with a different SPIFFE ID: a workload matching the larger one gets both
// identities, and without distinct hints it cannot tell which to use.
func ambiguous(entries []*Entry) []Finding {
	var usable []*Entry
	for _, e := range entries {
		if len(e.Selectors) > 0 && !e.SPIFFEID.IsZero() {
			cp := *e
			cp.ID = "" // let the index derive ids; duplicates are reported elsewhere
			cp.Selectors = slices.Clone(e.Selectors)
			usable = append(usable, &cp)
		}
	}
	ix, err := newIndexLenient(usable)
	if err != nil {
		return nil
	}
	var out []Finding
	for _, e := range usable {
		for _, other := range ix.Match(e.Selectors) {
			if other == e || other.SPIFFEID == e.SPIFFEID {
				continue
			}
			if e.Hint != "" && other.Hint != "" && e.Hint != other.Hint {
				continue
			}
			out = append(out, Finding{Pos: e.Pos, Severity: SeverityError, Code: "ambiguous", SPIFFEID: e.SPIFFEID.String(),
				Message: fmt.Sprintf("a workload matching %s also matches %s (%s) and gets both identities: give both entries distinct hints, or make the selectors disjoint",
					e.SPIFFEID, other.SPIFFEID, posOr(other))})
		}
	}
	return out
}

// newIndexLenient builds an index that tolerates duplicate entries.
func newIndexLenient(entries []*Entry) (*Index, error) {
	seen := map[string]bool{}
	var uniq []*Entry
	for _, e := range entries {
		k := EntryID(e)
		if seen[k] {
			continue
		}
		seen[k] = true
		uniq = append(uniq, e)
	}
	return NewIndex(uniq)
}

// splitPos splits "file:line" (line 0 when absent).
func splitPos(pos string) (string, int) {
	i := strings.LastIndexByte(pos, ':')
	if i < 0 {
		return pos, 0
	}
	n, err := strconv.Atoi(pos[i+1:])
	if err != nil {
		return pos, 0
	}
	return pos[:i], n
}
