package audit

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestFileSinkReopen(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "audit.log")
	l, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	exp := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	if err := l.Log(Record{Event: "issue", Decision: "allow", Kind: "x509", SPIFFEID: "spiffe://example.org/a",
		ExpiresAt: &exp, Serial: "ab", Caller: &Caller{PID: 7, UID: 1000, Binary: "/usr/bin/a"}}); err != nil {
		t.Fatal(err)
	}
	// Log rotation: the file is moved away, SIGUSR1 reopens a fresh one.
	if err := os.Rename(p, p+".1"); err != nil {
		t.Fatal(err)
	}
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	if err := l.Log(Record{Event: "deny", Decision: "deny", Reason: "no_identity"}); err != nil {
		t.Fatal(err)
	}
	first := readRecords(t, p+".1")
	second := readRecords(t, p)
	if len(first) != 1 || len(second) != 1 {
		t.Fatalf("records: %d in rotated file, %d in new", len(first), len(second))
	}
	r := first[0]
	if r.Event != "issue" || r.Caller.PID != 7 || r.Caller.Binary != "/usr/bin/a" || !r.ExpiresAt.Equal(exp) || r.Time.IsZero() {
		t.Errorf("record = %+v", r)
	}
	if second[0].Reason != "no_identity" {
		t.Errorf("second = %+v", second[0])
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o640 {
		t.Errorf("mode %v", st.Mode().Perm())
	}
}

func readRecords(t *testing.T, p string) []Record {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []Record
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r Record
		dec := json.NewDecoder(strings.NewReader(sc.Text()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

func TestNilAndOff(t *testing.T) {
	l, err := Open("off")
	if err != nil || l != nil {
		t.Fatalf("off: %v %v", l, err)
	}
	if err := l.Log(Record{Event: "x"}); err != nil {
		t.Fatal(err)
	}
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
}

// The hand-written encoder produces exactly what encoding/json would.
func TestEncoderMatchesEncodingJSON(t *testing.T) {
	exp := time.Date(2026, 11, 24, 10, 0, 0, 123456789, time.UTC)
	recs := []Record{
		{Time: exp, Event: "issue"},
		{Time: exp, Event: "issue", Decision: "allow", Reason: "update", Kind: "x509", RPC: "FetchX509SVID",
			SPIFFEID: "spiffe://example.org/a", Audience: []string{"a", "b<&>"}, ExpiresAt: &exp, Serial: "ff",
			JTI: "0123", EntryID: "e1", Caller: &Caller{PID: 1, UID: 2, GID: 3, Binary: "/bin/\"x\"\n\u2028\xff",
				Cgroup: "/a", SystemdUnit: "u.service", ContainerID: "c", PodUID: "p"},
			Upstream: "corp", Issuer: "i", Endpoint: "https://idp/token", Scope: "read write",
			TokenSHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", DurationMS: 1.25},
		{Time: exp.In(time.FixedZone("X", 3600)), Event: "deny", Caller: &Caller{}},
		{Time: exp, Event: "audit_dropped", Reason: "rate_limited", UID: new(uint32(65534)), Count: 12, Since: &exp},
		{Time: exp, Event: "issue", Audience: []string{"a"}, Omitted: 3, Truncated: true},
		{Time: exp, Event: "reload", Reason: strings.Repeat("é", capLong/2)}, // exactly at the cap
	}
	for _, r := range recs {
		want, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendRecord(nil, &r, 0); string(got) != string(want) {
			t.Errorf("encoder:\n got  %s\n want %s", got, want)
		}
	}
}

func FuzzEncoder(f *testing.F) {
	f.Add("spiffe://x/y", "/bin/a\n", 1.5)
	f.Fuzz(func(t *testing.T, s, bin string, d float64) {
		if d != d || d > 1e300 || d < -1e300 { // NaN and infinities are never recorded
			return
		}
		r := Record{Time: time.Unix(1, 0).UTC(), Event: s, SPIFFEID: s, Audience: []string{s, bin}, Caller: &Caller{Binary: bin}, DurationMS: d}
		want, err := json.Marshal(r)
		if err != nil {
			return
		}
		got := appendRecord(nil, &r, 0)
		if !strings.Contains(string(got), `"truncated":true`) {
			if string(got) != string(want) {
				t.Fatalf("encoder:\n got  %s\n want %s", got, want)
			}
			return
		}
		// Cut: still one valid JSON object within the bound, each cut
		// field a prefix of what encoding/json would write.
		line := encodeLine(nil, &r)
		var back Record
		if len(line) > MaxRecordSize || json.Unmarshal(line, &back) != nil {
			t.Fatalf("cut record: %d bytes: %s", len(line), line)
		}
		checkCut(t, "event", back.Event, r.Event)
		checkCut(t, "binary", back.Caller.Binary, r.Caller.Binary)
	})
}
