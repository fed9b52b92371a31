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
