package policy

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func codes(fs []Finding) string {
	var c []string
	for _, f := range fs {
		c = append(c, f.Severity+":"+f.Code)
	}
	return strings.Join(c, ",")
}

func TestCheck(t *testing.T) {
	now := time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)
	td := spiffeid.RequireTrustDomainFromString("example.org")
	withTTL := func(en *Entry, x509, jwt time.Duration) *Entry { en.X509TTL, en.JWTTTL = x509, jwt; return en }
	hinted := func(en *Entry, h string) *Entry { en.Hint = h; return en }
	tests := []struct {
		name    string
		entries []*Entry
		opts    CheckOptions
		want    string
	}{
		{"clean", []*Entry{e("/a", "unix:uid:1000", "unix:path:/bin/a"), e("/b", "unix:uid:1001")}, CheckOptions{}, ""},
		{"no selectors", []*Entry{e("/a")}, CheckOptions{}, "error:no-selectors"},
		{"bare gid 0", []*Entry{e("/a", "unix:gid:0")}, CheckOptions{}, "error:broad-selectors"},
		{"only broad", []*Entry{e("/a", "unix:group:staff", "k8s:qos:burstable", "systemd:slice:system.slice")}, CheckOptions{}, "error:broad-selectors"},
		{"root uid alone", []*Entry{e("/a", "unix:uid:0")}, CheckOptions{}, "error:broad-selectors"},
		{"root uid and unit", []*Entry{e("/a", "unix:uid:0", "systemd:unit:a.service")}, CheckOptions{}, ""},
		{"ambiguous subset", []*Entry{e("/a", "unix:uid:1000"), e("/b", "unix:uid:1000", "unix:path:/bin/b")}, CheckOptions{}, "error:ambiguous"},
		{"ambiguous equal", []*Entry{e("/a", "unix:uid:1000"), e("/b", "unix:uid:1000")}, CheckOptions{}, "error:ambiguous,error:ambiguous"},
		{"same hint still ambiguous", []*Entry{hinted(e("/a", "unix:uid:1000"), "x"), hinted(e("/b", "unix:uid:1000"), "x")}, CheckOptions{}, "error:ambiguous,error:ambiguous"},
		{"distinct hints", []*Entry{hinted(e("/a", "unix:uid:1000"), "a"), hinted(e("/b", "unix:uid:1000"), "b")}, CheckOptions{}, ""},
		{"same id twice is not ambiguous", []*Entry{e("/a", "unix:uid:1000"), e("/a", "unix:uid:1000", "unix:gid:5")}, CheckOptions{}, ""},
		{"conflicting duplicate", []*Entry{withTTL(e("/a", "unix:uid:1"), time.Hour, time.Minute), withTTL(e("/a", "unix:uid:2"), 2*time.Hour, time.Minute)}, CheckOptions{}, "error:conflicting-duplicate"},
		{"ttl above max", []*Entry{withTTL(e("/a", "unix:uid:1"), 48*time.Hour, 2*time.Hour)}, CheckOptions{MaxX509TTL: 24 * time.Hour, MaxJWTTTL: time.Hour}, "error:ttl-too-long,error:ttl-too-long"},
		{"foreign trust domain", []*Entry{{SPIFFEID: spiffeid.RequireFromString("spiffe://other.org/a"), Selectors: sels("unix:uid:1")}}, CheckOptions{TrustDomain: td}, "error:foreign-trust-domain"},
		{"owner and expires required", []*Entry{e("/a", "unix:uid:1")}, CheckOptions{RequireOwner: true, RequireExpires: true}, "error:missing-owner,error:missing-expires"},
		{"expired is a warning", []*Entry{{SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/a"), Selectors: sels("unix:uid:1"), ExpiresAt: now.Add(-time.Hour)}}, CheckOptions{Now: now}, "warning:expired"},
		{"errors before warnings", []*Entry{{SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/a"), Selectors: sels("unix:uid:1"), ExpiresAt: now.Add(-time.Hour)}, e("/b", "unix:gid:0")}, CheckOptions{Now: now}, "error:broad-selectors,warning:expired"},
	}
	for _, tt := range tests {
		got := Check(tt.entries, tt.opts)
		if codes(got) != tt.want {
			t.Errorf("%s: findings %q, want %q\n%v", tt.name, codes(got), tt.want, got)
		}
		for _, f := range got {
			if f.Message == "" || f.SPIFFEID == "" {
				t.Errorf("%s: finding without message or ID: %+v", tt.name, f)
			}
		}
	}
}

func BenchmarkCheck10k(b *testing.B) {
	var entries []*Entry
	for i := range 10000 {
		entries = append(entries, e("/u/"+itoa(i+1), "unix:uid:"+itoa(i+1), "unix:gid:100"))
	}
	for b.Loop() {
		if fs := Check(entries, CheckOptions{}); len(fs) != 0 {
			b.Fatalf("findings on a clean policy: %v", fs[:1])
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
