package broker

import (
	"net/http"
	"strconv"
	"time"

	"github.com/nodeward/nodeward/internal/audit"
)

// DefaultForce is a forced outage's duration when the request names none.
const DefaultForce = 60 * time.Second

// ForceStatus is the answer of /v1/breaker/force.
type ForceStatus struct {
	Upstream    string     `json:"upstream"`
	State       string     `json:"state"` // the breaker's state after the request
	Forced      bool       `json:"forced"`
	ForcedUntil *time.Time `json:"forced_until,omitempty"`
	WasForced   bool       `json:"was_forced,omitempty"` // DELETE: a force was in effect
	Environment string     `json:"environment,omitempty"`
}

// forcePrivileged reports whether c may force a breaker: root or the
// broker's own uid, on the Unix socket only (never loopback TCP, never an
// unattributed caller). allow_uids does not grant it.
func forcePrivileged(c *caller) bool {
	return c != nil && !c.tcp && (c.uid == 0 || c.uid == uint32(getuid()))
}

// serveForce serves /v1/breaker/force:
//
//	POST   ?upstream=NAME[&duration=60s][&confirm_production=true]  force open
//	DELETE ?upstream=NAME                                          revert
//	GET    ?upstream=NAME                                          state
//
// Every force ends by itself after its duration (at most MaxForce), even
// when the caller dies.
func (b *Broker) serveForce(w http.ResponseWriter, r *http.Request) {
	c := callerOf(r.Context())
	rec := audit.Record{Event: "breaker_force", Decision: "deny"}
	if c != nil {
		rec.Caller = &audit.Caller{PID: c.pid, UID: c.uid, GID: c.gid, Binary: c.binary()}
	}
	fail := func(status int, code, desc, reason string) {
		if r.Method != http.MethodGet {
			rec.Reason = reason
			b.auditLog(rec)
		}
		writeJSON(w, status, errorResponse{Error: code, Description: desc})
	}
	if r.Method != http.MethodGet && r.Method != http.MethodPost && r.Method != http.MethodDelete {
		w.Header().Set("Allow", "GET, POST, DELETE")
		writeJSON(w, http.StatusMethodNotAllowed, errorResponse{Error: "invalid_request", Description: "use GET, POST or DELETE"})
		return
	}
	if r.Header.Get(RequestHeader) != "true" {
		writeJSON(w, http.StatusBadRequest, errorResponse{Error: "invalid_request", Description: "the " + RequestHeader + ": true header is required"})
		return
	}
	if !forcePrivileged(c) {
		fail(http.StatusForbidden, "access_denied", "forcing a circuit breaker needs root or the broker's own user, on the Unix socket", "not_privileged")
		return
	}
	q := r.URL.Query()
	name := q.Get("upstream")
	br, ok := b.breakers[name]
	if !ok {
		writeJSON(w, http.StatusBadRequest, errorResponse{Error: "invalid_request", Description: "unknown upstream " + strconv.Quote(truncate(name, 64))})
		return
	}
	rec.Upstream = name
	if u := b.upstreams[name]; u != nil {
		rec.Endpoint = u.cfg.TokenEndpoint
	}
	st := ForceStatus{Upstream: name, Environment: b.cfg.Environment}
	switch r.Method {
	case http.MethodPost:
		d := DefaultForce
		if s := q.Get("duration"); s != "" {
			v, err := time.ParseDuration(s)
			if err != nil || v <= 0 || v > MaxForce {
				fail(http.StatusBadRequest, "invalid_request", "duration must be a duration in (0, "+MaxForce.String()+"]", "bad_request")
				return
			}
			d = v
		}
		if b.cfg.Production() && q.Get("confirm_production") != "true" {
			fail(http.StatusConflict, "production_node", "this node's broker config says environment: production; confirm_production=true is required", "production_not_confirmed")
			return
		}
		until := b.forceOpen(name, br, d)
		rec.Decision, rec.Reason, rec.ExpiresAt = "allow", "forced_open for "+d.String(), &until
		b.auditLog(rec)
		b.log.Warn("circuit breaker forced open (game day)", "upstream", name, "for", d, "uid", c.uid, "pid", c.pid)
	case http.MethodDelete:
		st.WasForced = b.unforce(name, br)
		rec.Decision, rec.Reason = "allow", "reverted"
		b.auditLog(rec)
		b.log.Warn("forced circuit breaker reverted", "upstream", name, "was_forced", st.WasForced, "uid", c.uid, "pid", c.pid)
	}
	st.State = br.State()
	if until, ok := br.Forced(); ok {
		u := until.UTC()
		st.Forced, st.ForcedUntil = true, &u
	}
	writeJSON(w, http.StatusOK, st)
}

// forceOpen forces br open for d and arms the timer that reverts it.
func (b *Broker) forceOpen(name string, br *Breaker, d time.Duration) time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	until, _ := br.ForceOpen(d) // d was checked
	if b.forceTimers == nil {
		b.forceTimers = map[string]*time.Timer{}
	}
	if t := b.forceTimers[name]; t != nil {
		t.Stop()
	}
	b.forceTimers[name] = time.AfterFunc(d, func() { b.expireForce(name, br, until) })
	b.metrics.BreakerForced.WithLabelValues(name).Set(1)
	b.metrics.BreakerState.WithLabelValues(name).Set(breakerValue("open"))
	return until
}

// unforce ends br's forced outage now; it reports whether one was in force.
func (b *Broker) unforce(name string, br *Breaker) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if t := b.forceTimers[name]; t != nil {
		t.Stop()
		delete(b.forceTimers, name)
	}
	was := br.Unforce()
	b.metrics.BreakerForced.WithLabelValues(name).Set(0)
	b.metrics.BreakerState.WithLabelValues(name).Set(breakerValue(br.State()))
	return was
}

// expireForce reverts the force that ends at until, unless another force
// replaced it.
func (b *Broker) expireForce(name string, br *Breaker, until time.Time) {
	b.mu.Lock()
	cur, _ := br.Forced()
	if !cur.IsZero() && !cur.Equal(until) {
		b.mu.Unlock()
		return // a later force holds
	}
	delete(b.forceTimers, name)
	br.Unforce()
	b.metrics.BreakerForced.WithLabelValues(name).Set(0)
	b.metrics.BreakerState.WithLabelValues(name).Set(breakerValue(br.State()))
	b.mu.Unlock()
	rec := audit.Record{Event: "breaker_force", Decision: "allow", Reason: "expired", Upstream: name}
	if u := b.upstreams[name]; u != nil {
		rec.Endpoint = u.cfg.TokenEndpoint
	}
	b.auditLog(rec)
	b.log.Warn("forced circuit breaker reverted at its deadline", "upstream", name)
}
