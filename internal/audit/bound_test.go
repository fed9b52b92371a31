package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"
)

// checkCut checks that got is what encoding/json round-trips from orig, or
// a prefix of it ending in the ellipsis.
func checkCut(t *testing.T, field, got, orig string) {
	t.Helper()
	b, _ := json.Marshal(orig)
	var norm string
	_ = json.Unmarshal(b, &norm)
	if got == norm {
		return
	}
	if !strings.HasSuffix(got, ellipsis) || !strings.HasPrefix(norm, strings.TrimSuffix(got, ellipsis)) {
		t.Fatalf("%s: got %q, not a marked prefix of %q", field, got, norm)
	}
}

// worst is a record with every field far over its cap, in the costliest
// characters to encode.
func worst() Record {
	long := func(unit string) string { return strings.Repeat(unit, 20000) }
	t := time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.FixedZone("", -(23*3600+59*60)))
	aud := make([]string, 1000)
	for i := range aud {
		aud[i] = long("<")
	}
	return Record{Time: t, Event: long("\x01"), Decision: long(">"), Reason: long("&"), Kind: long("\u2028"), RPC: long("\xff"),
		SPIFFEID: long("<"), Audience: aud, Omitted: math.MaxInt, ExpiresAt: &t, Serial: long("<"), JTI: long("<"), EntryID: long("<"),
		Caller: &Caller{PID: math.MinInt32, UID: math.MaxUint32, GID: math.MaxUint32, Binary: long("<"), Cgroup: long("<"),
			SystemdUnit: long("<"), ContainerID: long("<"), PodUID: long("<")},
		Upstream: long("<"), Issuer: long("<"), Endpoint: long("<"), Scope: long("<"), TokenSHA256: long("<"), DurationMS: -math.MaxFloat64,
		UID: new(uint32(math.MaxUint32)), Count: math.MaxUint64, Since: &t, Truncated: true}
}

// Whatever a record holds, its line stays within MaxRecordSize, is valid
// JSON and UTF-8, and says it was cut; cut strings end in the ellipsis.
func TestRecordSizeBound(t *testing.T) {
	r := worst()
	line := encodeLine(nil, &r)
	if len(line) > MaxRecordSize {
		t.Fatalf("worst record: %d bytes > %d", len(line), MaxRecordSize)
	}
	// The last resort must fit on its own (encodeLine stops there).
	if n := len(appendRecord(nil, &r, maxShift)) + 1; n > MaxRecordSize {
		t.Fatalf("at the smallest caps: %d bytes", n)
	}
	if !utf8.Valid(line) || line[len(line)-1] != '\n' || bytes.Count(line, []byte("\n")) != 1 {
		t.Fatalf("not one UTF-8 line: %q", line)
	}
	var back Record
	if err := json.Unmarshal(line, &back); err != nil {
		t.Fatalf("%v: %s", err, line)
	}
	if !back.Truncated || !strings.HasSuffix(back.Reason, ellipsis) || !strings.HasSuffix(back.Caller.Binary, ellipsis) || len(back.Audience) == 0 {
		t.Errorf("cut record lacks its marks: %+v", back)
	}
	t.Logf("worst case: %d bytes", len(line))
}

// The two floods of issue 11 item 4: a deny reason quoting a 1 KiB kid, and
// an issue record listing 32 audiences of 1 KiB.
func TestFieldsCutAndMarked(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf)
	kid := strings.Repeat("K", 1024)
	aud := make([]string, 32)
	for i := range aud {
		aud[i] = strings.Repeat(string(rune('a'+i%26)), 1024)
	}
	if err := l.Log(Record{Event: "reload", Decision: "deny", Reason: "no JWT authority " + kid}); err != nil {
		t.Fatal(err)
	}
	if err := l.Log(Record{Event: "issue", Decision: "allow", Kind: "jwt", Audience: aud, Caller: &Caller{UID: 1}}); err != nil {
		t.Fatal(err)
	}
	if err := l.Log(Record{Event: "issue", Decision: "allow", Kind: "jwt", Audience: []string{"svc"}}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines", len(lines))
	}
	var recs [3]Record
	for i, ln := range lines {
		if len(ln)+1 > MaxRecordSize {
			t.Errorf("line %d: %d bytes", i, len(ln)+1)
		}
		if err := json.Unmarshal([]byte(ln), &recs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if r := recs[0]; !r.Truncated || len(r.Reason) > capLong || !strings.HasSuffix(r.Reason, ellipsis) {
		t.Errorf("reason not cut: %d bytes, truncated=%v", len(r.Reason), r.Truncated)
	}
	r := recs[1]
	if !r.Truncated || len(r.Audience)+r.Omitted != 32 || r.Omitted == 0 {
		t.Errorf("audiences: %d listed + %d omitted, truncated=%v", len(r.Audience), r.Omitted, r.Truncated)
	}
	for i, a := range r.Audience {
		checkCut(t, "audience", a, aud[i])
	}
	if r := recs[2]; r.Truncated || r.Omitted != 0 || len(r.Audience) != 1 {
		t.Errorf("short record marked: %+v", r)
	}
}

// clock is a settable time for the limiter.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// syncBuffer is a bytes.Buffer safe for the flush timer's goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) records(t *testing.T) []Record {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Record
	for ln := range strings.Lines(s.b.String()) {
		var r Record
		if err := json.Unmarshal([]byte(ln), &r); err != nil {
			t.Fatalf("%v: %q", err, ln)
		}
		out = append(out, r)
	}
	return out
}

func newTestLogger(w io.Writer, lim Limits) (*Logger, *clock, *atomic.Int64, *atomic.Int64) {
	l := New(w)
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	l.now = c.now
	l.SetLimits(lim)
	var lost, dropped atomic.Int64
	l.SetHooks(Hooks{Lost: func() { lost.Add(1) }, Dropped: func() { dropped.Add(1) }})
	return l, c, &lost, &dropped
}

func count(recs []Record, event, decision string) (n int) {
	for _, r := range recs {
		if r.Event == event && r.Decision == decision {
			n++
		}
	}
	return n
}

// A flood of denials from one uid is cut to its bucket, counted, and
// summed in an audit_dropped record once the uid may write again; other
// uids and grants are not affected.
func TestDenialsRateLimitedPerUID(t *testing.T) {
	var buf syncBuffer
	l, c, lost, dropped := newTestLogger(&buf, Limits{PerUID: 10, PerUIDBurst: 5, Total: 1000, TotalBurst: 1000, UIDs: 16, Flush: time.Hour})
	defer l.Close()
	deny := func(uid uint32) Record {
		return Record{Event: "validate", Decision: "deny", Reason: "unknown_key_id", Caller: &Caller{UID: uid}}
	}
	start := c.now()
	for range 1000 {
		if err := l.Log(deny(65534)); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		_ = l.Log(deny(1000))
		_ = l.Log(Record{Event: "issue", Decision: "allow", Caller: &Caller{UID: 65534}})
	}
	recs := buf.records(t)
	if n := count(recs, "validate", "deny"); n != 5+3 {
		t.Errorf("denials written: %d, want 5 (burst) + 3 (another uid)", n)
	}
	if n := count(recs, "issue", "allow"); n != 3 {
		t.Errorf("grants written: %d, want all 3", n)
	}
	if dropped.Load() != 995 || lost.Load() != 0 {
		t.Errorf("dropped hook %d (want 995), lost %d", dropped.Load(), lost.Load())
	}
	// A tenth of a second later the uid may write one more: the count of
	// what was dropped comes first.
	c.add(100 * time.Millisecond)
	_ = l.Log(deny(65534))
	recs = buf.records(t)
	if len(recs) < 2 {
		t.Fatal("no records")
	}
	sum, next := recs[len(recs)-2], recs[len(recs)-1]
	if sum.Event != "audit_dropped" || sum.UID == nil || *sum.UID != 65534 || sum.Count != 995 || sum.Since == nil ||
		!sum.Since.Equal(start) || sum.Reason != "rate_limited" {
		t.Errorf("summary = %+v", sum)
	}
	if next.Event != "validate" || next.Caller.UID != 65534 {
		t.Errorf("after the summary: %+v", next)
	}
}

// Drops are recorded by the timer when the flooding uid goes quiet, and on
// Close; uids beyond the LRU's size are summed without a uid, so a flood of
// uids cannot grow the limiter.
func TestDroppedFlushedByTimerAndClose(t *testing.T) {
	var buf syncBuffer
	l, _, _, dropped := newTestLogger(&buf, Limits{PerUID: 1, PerUIDBurst: 1, Total: 1000, TotalBurst: 1000, UIDs: 4, Flush: 20 * time.Millisecond, Summaries: 2})
	l.now = time.Now // one flush, one time
	for uid := range uint32(100) {
		for range 3 { // one written, two dropped per uid
			_ = l.Log(Record{Event: "deny", Decision: "deny", Caller: &Caller{UID: uid}})
		}
	}
	if n := l.lim.uids.Len(); n > 4 {
		t.Fatalf("limiter tracks %d uids, bound 4", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	var total uint64
	var named map[time.Time]int // per flush
	for total < 200 && time.Now().Before(deadline) {
		total, named = 0, map[time.Time]int{}
		for _, r := range buf.records(t) {
			if r.Event == "audit_dropped" {
				total += r.Count
				if r.UID != nil {
					named[r.Time]++
				}
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	if total != 200 || dropped.Load() != 200 {
		t.Fatalf("audit_dropped sum %d, hook %d, want 200", total, dropped.Load())
	}
	for at, n := range named {
		if n > 2 {
			t.Errorf("flush at %v: %d audit_dropped records name a uid, want at most Summaries=2", at, n)
		}
	}
	// Close writes what is pending.
	_ = l.Log(Record{Event: "deny", Decision: "deny", Caller: &Caller{UID: 7}})
	_ = l.Log(Record{Event: "deny", Decision: "deny", Caller: &Caller{UID: 7}})
	before := len(buf.records(t))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	recs := buf.records(t)
	if len(recs) != before+1 || recs[len(recs)-1].Event != "audit_dropped" || recs[len(recs)-1].Count != 1 {
		t.Errorf("Close did not record the pending drop: %+v", recs[before:])
	}
}

// The limit over all uids holds when every call comes from a new uid.
func TestDenialsRateLimitedOverall(t *testing.T) {
	var buf syncBuffer
	l, _, _, dropped := newTestLogger(&buf, Limits{PerUID: 10, PerUIDBurst: 10, Total: 1, TotalBurst: 20, UIDs: 8, Flush: time.Hour})
	defer l.Close()
	for uid := range uint32(500) {
		_ = l.Log(Record{Event: "deny", Decision: "deny", Caller: &Caller{UID: uid}})
	}
	if n := count(buf.records(t), "deny", "deny"); n != 20 || dropped.Load() != 480 {
		t.Errorf("%d denials written, %d dropped; want 20 and 480", n, dropped.Load())
	}
}

// failingWriter takes room bytes, then fails like a full disk.
type failingWriter struct {
	room int
	buf  bytes.Buffer
}

func (w *failingWriter) Write(p []byte) (int, error) {
	n := min(len(p), w.room)
	w.room -= n
	w.buf.Write(p[:n])
	if n < len(p) {
		return n, syscall.ENOSPC
	}
	return n, nil
}

// Every record that does not make it, whole, is counted; a record cut by a
// full disk is fenced off so that the next one starts on its own line.
func TestLostRecordsCounted(t *testing.T) {
	w := &failingWriter{room: 300}
	l, _, lost, _ := newTestLogger(w, DefaultLimits)
	rec := Record{Event: "issue", Decision: "allow", Kind: "jwt", SPIFFEID: "spiffe://example.org/" + strings.Repeat("x", 100)}
	var errs int
	for range 10 {
		if err := l.Log(rec); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("error %v", err)
			}
			errs++
		}
	}
	written := strings.Count(w.buf.String(), "\n")
	if errs == 0 || int(lost.Load()) != errs || written+errs != 10 {
		t.Fatalf("lost hook %d, errors %d, whole lines %d of 10", lost.Load(), errs, written)
	}
	// Room again (log rotation freed space): the partial line is closed
	// and the next record parses.
	w.room = 1 << 20
	if err := l.Log(rec); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(w.buf.String(), "\n"), "\n")
	var last Record
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || last.SPIFFEID != rec.SPIFFEID {
		t.Fatalf("record after a partial write: %v %q", err, lines[len(lines)-1])
	}
	if lost.Load() != int64(errs) {
		t.Errorf("lost %d after recovery, want %d", lost.Load(), errs)
	}
	// After Close, a file sink loses (and counts) records.
	dir := t.TempDir()
	fl, err := Open(filepath.Join(dir, "a.log"))
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	fl.SetHooks(Hooks{Lost: func() { n.Add(1) }})
	_ = fl.Close()
	if err := fl.Log(rec); err == nil || n.Load() != 1 {
		t.Errorf("log after close: %v, lost %d", err, n.Load())
	}
}

// Log, Reopen and Close run at once (the agent's SIGUSR1 goroutine against
// its shutdown): no race, no write to a closed file left uncounted, no
// reopen after Close.
func TestLogReopenCloseConcurrently(t *testing.T) {
	for range 20 {
		dir := t.TempDir()
		p := filepath.Join(dir, "audit.log")
		l, err := Open(p)
		if err != nil {
			t.Fatal(err)
		}
		var lost atomic.Int64
		l.SetHooks(Hooks{Lost: func() { lost.Add(1) }})
		var wg sync.WaitGroup
		var written, failed atomic.Int64
		for range 4 {
			wg.Go(func() {
				for range 50 {
					if l.Log(Record{Event: "issue", Decision: "allow"}) == nil {
						written.Add(1)
					} else {
						failed.Add(1)
					}
				}
			})
		}
		wg.Go(func() {
			for range 20 {
				_ = l.Reopen()
			}
		})
		wg.Go(func() { _ = l.Close() })
		wg.Wait()
		if err := l.Reopen(); err == nil {
			t.Fatal("Reopen after Close succeeded")
		}
		if lost.Load() != failed.Load() {
			t.Fatalf("lost hook %d, failed Logs %d", lost.Load(), failed.Load())
		}
		b, _ := os.ReadFile(p)
		if got := int64(bytes.Count(b, []byte("\n"))); got != written.Load() {
			t.Fatalf("%d lines in the file, %d Logs succeeded", got, written.Load())
		}
	}
}

// BenchmarkLogIssue measures one typical issue record (the cost every
// Workload API grant pays), with the caps and the limiter in place.
func BenchmarkLogIssue(b *testing.B) {
	l := New(io.Discard)
	exp := time.Now()
	r := Record{Event: "issue", Decision: "allow", Kind: "jwt", RPC: "FetchJWTSVID", SPIFFEID: "spiffe://example.org/ns/default/sa/web",
		Audience: []string{"https://api.example.org"}, JTI: "0123456789abcdef0123456789abcdef", ExpiresAt: &exp, EntryID: "e-1",
		Caller: &Caller{PID: 4242, UID: 1000, GID: 1000, Binary: "/usr/local/bin/web-server",
			Cgroup:      "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0123.slice/cri-containerd-0123456789abcdef.scope",
			ContainerID: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", PodUID: "01234567-89ab-cdef-0123-456789abcdef"}}
	b.ReportAllocs()
	for b.Loop() {
		_ = l.Log(r)
	}
}

// BenchmarkLogDenyLimited measures a denial dropped by the rate limit (the
// cost of a flood once past the burst).
func BenchmarkLogDenyLimited(b *testing.B) {
	l := New(io.Discard)
	r := Record{Event: "validate", Decision: "deny", Reason: "unknown_key_id", Caller: &Caller{UID: 65534}}
	b.ReportAllocs()
	for b.Loop() {
		_ = l.Log(r)
	}
}
