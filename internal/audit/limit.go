package audit

import (
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"golang.org/x/time/rate"
)

// Limits bound how many denial records callers can make the audit trail
// write. Grants (issue records) are never dropped.
type Limits struct {
	PerUID      rate.Limit    // denials recorded per second and caller uid
	PerUIDBurst int           // and in a burst
	Total       rate.Limit    // denials recorded per second over all uids
	TotalBurst  int           // and in a burst
	UIDs        int           // caller uids tracked; the least recently seen are forgotten
	Flush       time.Duration // at most this long before dropped records are counted in the trail
	Summaries   int           // audit_dropped records per flush naming a uid; the rest are summed in one
}

// DefaultLimits: 10 denials a second per uid (bursts of 50), 100 a second in
// all (bursts of 200). At MaxRecordSize that is at most 400 KiB/s of denials
// on a node under attack by many uids, ~40 KiB/s from one; in practice a
// denial is ~300 bytes.
var DefaultLimits = Limits{PerUID: 10, PerUIDBurst: 50, Total: 100, TotalBurst: 200, UIDs: 1024, Flush: 10 * time.Second, Summaries: 64}

// dropped counts the records dropped since the first one.
type dropped struct {
	n     uint64
	since time.Time
}

func (d *dropped) add(n uint64, since time.Time) {
	if d.n == 0 || since.Before(d.since) {
		d.since = since
	}
	d.n += n
}

// record returns the audit_dropped record for d (uid nil: several uids).
func (d *dropped) record(uid *uint32, now time.Time) Record {
	since := d.since
	return Record{Time: now, Event: "audit_dropped", Reason: "rate_limited", UID: uid, Count: d.n, Since: &since}
}

type uidState struct {
	lim *rate.Limiter
	dropped
}

// limiter is a token bucket per caller uid (a bounded LRU, so a flood of
// uids cannot grow it) and one for all uids, with the counts of what they
// dropped.
type limiter struct {
	mu      sync.Mutex
	lim     Limits
	total   *rate.Limiter
	uids    *simplelru.LRU[uint32, *uidState]
	others  dropped // drops of uids forgotten before their count was recorded
	timer   *time.Timer
	stopped bool
	flushFn func()
}

func newLimiter(lim Limits, flush func()) *limiter {
	if lim.UIDs <= 0 {
		lim.UIDs = DefaultLimits.UIDs
	}
	if lim.Flush <= 0 {
		lim.Flush = DefaultLimits.Flush
	}
	if lim.Summaries <= 0 {
		lim.Summaries = DefaultLimits.Summaries
	}
	total := rate.NewLimiter(rate.Inf, 0)
	if lim.Total > 0 {
		total = rate.NewLimiter(lim.Total, lim.TotalBurst)
	}
	l := &limiter{lim: lim, total: total, flushFn: flush}
	// The size is positive, so NewLRU cannot fail.
	l.uids, _ = simplelru.NewLRU(lim.UIDs, func(_ uint32, st *uidState) {
		if st.n > 0 {
			l.others.add(st.n, st.since)
		}
	})
	return l
}

// admit reports whether a denial by uid may be recorded now; when it may and
// earlier ones of uid were dropped, it returns their audit_dropped record,
// to be written first.
func (l *limiter) admit(uid uint32, now time.Time) (bool, *Record) {
	l.mu.Lock()
	defer l.mu.Unlock()
	st, ok := l.uids.Get(uid)
	if !ok {
		st = &uidState{lim: rate.NewLimiter(l.lim.PerUID, l.lim.PerUIDBurst)}
		l.uids.Add(uid, st)
	}
	if st.lim.AllowN(now, 1) && l.total.AllowN(now, 1) {
		if st.n == 0 {
			return true, nil
		}
		u := uid // only this branch pays for the pointer
		r := st.record(&u, now)
		st.dropped = dropped{}
		return true, &r
	}
	st.add(1, now)
	if l.timer == nil && !l.stopped {
		l.timer = time.AfterFunc(l.lim.Flush, l.flushFn)
	}
	return false, nil
}

// flush returns the audit_dropped records due: one per uid with drops (up
// to Summaries), the rest summed in one without a uid.
func (l *limiter) flush(now time.Time) []Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.timer = nil
	if l.stopped {
		return nil
	}
	return l.flushLocked(now)
}

func (l *limiter) flushLocked(now time.Time) []Record {
	var out []Record
	for _, uid := range l.uids.Keys() {
		st, _ := l.uids.Peek(uid)
		if st.n == 0 {
			continue
		}
		if len(out) < l.lim.Summaries {
			out = append(out, st.record(&uid, now))
		} else {
			l.others.add(st.n, st.since)
		}
		st.dropped = dropped{}
	}
	if l.others.n > 0 {
		out = append(out, l.others.record(nil, now))
		l.others = dropped{}
	}
	return out
}

// stop cancels the timer and returns the last audit_dropped records.
func (l *limiter) stop(now time.Time) []Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	if l.stopped {
		return nil
	}
	l.stopped = true
	return l.flushLocked(now)
}
