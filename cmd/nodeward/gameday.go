package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/nodeward/nodeward/agent"
	"github.com/nodeward/nodeward/agent/config"
	"github.com/nodeward/nodeward/broker"
)

// Bounds of a game day: what one run can make the broker and the IdP do.
const (
	gamedayMaxRequests = 1000
	gamedayMaxRecovery = 10 * time.Minute
	gamedayLatencyP95  = 200 * time.Millisecond // SLO: exchange latency p95
	gamedayIssuanceSLO = 0.999                  // SLO: issuance success
)

// errNotReverted marks a game day whose forced outage could not be
// reverted (exit code 1, said loudly).
var errNotReverted = errors.New("NOT REVERTED")

// GamedayReport is what `nodeward gameday --json` prints.
type GamedayReport struct {
	Upstream string         `json:"upstream"`
	Started  time.Time      `json:"started"`
	Phases   []GamedayPhase `json:"phases"`
	SLOs     []GamedaySLO   `json:"slos"`
	Reverted bool           `json:"reverted"`
	Passed   bool           `json:"passed"`
}

// GamedayPhase is one step of the rehearsal and what users saw during it.
type GamedayPhase struct {
	Name       string  `json:"name"`
	OK         bool    `json:"ok"`
	Detail     string  `json:"detail,omitempty"`
	Requests   int     `json:"requests,omitempty"`
	FromCache  int     `json:"served_from_cache,omitempty"` // 200 answers while the IdP was "down"
	Status503  int     `json:"status_503,omitempty"`
	Other      int     `json:"other,omitempty"` // any other answer
	RetryAfter bool    `json:"retry_after,omitempty"`
	P50MS      float64 `json:"latency_p50_ms,omitempty"`
	P95MS      float64 `json:"latency_p95_ms,omitempty"`
	P99MS      float64 `json:"latency_p99_ms,omitempty"`
	SecondsTo  float64 `json:"seconds,omitempty"` // recovery: until a fresh upstream token
}

// GamedaySLO is one SLO judged from what the rehearsal measured.
type GamedaySLO struct {
	Name      string `json:"name"`
	Objective string `json:"objective"`
	Measured  string `json:"measured"`
	Pass      bool   `json:"pass"`
}

// gamedayClient talks to the broker's Unix socket as a normal caller.
type gamedayClient struct {
	http     *http.Client
	upstream string
}

type brokerAnswer struct {
	status     int
	retryAfter string
	errCode    string
	desc       string
	took       time.Duration
}

func (g *gamedayClient) do(ctx context.Context, method, path string, q url.Values, out any) (brokerAnswer, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://broker"+path+"?"+q.Encode(), nil)
	if err != nil {
		return brokerAnswer{}, err
	}
	req.Header.Set(broker.RequestHeader, "true")
	start := time.Now()
	resp, err := g.http.Do(req)
	if err != nil {
		return brokerAnswer{}, fmt.Errorf("broker: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	a := brokerAnswer{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"), took: time.Since(start)}
	if err != nil {
		return a, fmt.Errorf("broker: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error       string `json:"error"`
			Description string `json:"error_description"`
		}
		_ = json.Unmarshal(body, &e)
		a.errCode, a.desc = e.Error, e.Description
		return a, nil
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return a, fmt.Errorf("broker: %w", err)
		}
	}
	return a, nil
}

// token asks for a token as any caller would; the token itself is dropped.
func (g *gamedayClient) token(ctx context.Context, aud string, scopes []string) (brokerAnswer, error) {
	q := url.Values{"upstream": {g.upstream}}
	if aud != "" {
		q.Set("audience", aud)
	}
	for _, s := range scopes {
		q.Add("scope", s)
	}
	return g.do(ctx, http.MethodGet, "/v1/token", q, nil)
}

func (g *gamedayClient) force(ctx context.Context, method string, q url.Values) (broker.ForceStatus, brokerAnswer, error) {
	q.Set("upstream", g.upstream)
	var st broker.ForceStatus
	a, err := g.do(ctx, method, "/v1/breaker/force", q, &st)
	return st, a, err
}

// revert ends the forced outage, retrying for a while; it uses its own
// context so that a cancelled run (SIGINT, SIGTERM) still reverts.
func (g *gamedayClient) revert() (broker.ForceStatus, error) {
	deadline := time.Now().Add(30 * time.Second)
	var last error
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		st, a, err := g.force(ctx, http.MethodDelete, url.Values{})
		cancel()
		switch {
		case err != nil:
			last = err
		case a.status != http.StatusOK:
			last = fmt.Errorf("HTTP %d %s: %s", a.status, a.errCode, a.desc)
		case st.Forced:
			last = errors.New("the breaker still reports a forced outage")
		default:
			return st, nil
		}
		if time.Now().After(deadline) {
			return st, last
		}
		time.Sleep(500 * time.Millisecond) // retry pacing, not synchronisation
	}
}

func percentile(d []time.Duration, p float64) float64 {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(float64(len(s))*p+0.999999) - 1
	i = min(max(i, 0), len(s)-1)
	return float64(s[i].Microseconds()) / 1000
}

func runGameday(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("gameday", stderr)
	sock := fs.String("broker", broker.DefaultBrokerSocket, "the broker's Unix socket")
	upstream := fs.String("upstream", "", "upstream whose IdP outage is rehearsed (required)")
	aud := fs.String("audience", "", "audience of the pre-warmed token (what a user of this node asks for)")
	var scopes stringList
	fs.Var(&scopes, "scope", "scope of the pre-warmed token (repeatable; default: the upstream's scopes)")
	outage := fs.Duration("outage", broker.DefaultForce, "how long the broker keeps the breaker forced open (max 10m); it reverts by itself after that even if gameday dies")
	requests := fs.Int("requests", 50, "token requests sent during the outage (max 1000)")
	interval := fs.Duration("interval", 50*time.Millisecond, "pause between requests during the outage")
	recovery := fs.Duration("recovery-timeout", 60*time.Second, "how long to wait after the revert for a fresh upstream token (max 10m)")
	allowProd := fs.Bool("allow-production", false, "confirm a game day on a node whose broker config says environment: production")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	revokeEntry := fs.String("revoke-entry", "", "also rehearse a revocation: take this test entry away for --revoke-for and measure the time to revoke (gameday must be a workload of it)")
	revokeFor := fs.Duration("revoke-for", time.Minute, "how long the agent keeps the test entry taken away at most (max 10m); it resumes it by itself after that")
	workloadSock := fs.String("socket", config.DefaultSocketPath(), "the agent's Workload API socket (revocation rehearsal)")
	dataDir := fs.String("data-dir", config.DefaultDataDir(), "the agent's data_dir (revocation rehearsal: its suspend request directory)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case *upstream == "":
		return fmt.Errorf("%w: --upstream is required", errUsage)
	case *outage <= 0 || *outage > broker.MaxForce:
		return fmt.Errorf("%w: --outage must be in (0, %v]", errUsage, broker.MaxForce)
	case *requests < 1 || *requests > gamedayMaxRequests:
		return fmt.Errorf("%w: --requests must be in [1, %d]", errUsage, gamedayMaxRequests)
	case *interval < 0 || *interval > time.Minute:
		return fmt.Errorf("%w: --interval must be in [0, 1m]", errUsage)
	case *recovery <= 0 || *recovery > gamedayMaxRecovery:
		return fmt.Errorf("%w: --recovery-timeout must be in (0, %v]", errUsage, gamedayMaxRecovery)
	case *revokeFor <= 0 || *revokeFor > agent.MaxSuspend:
		return fmt.Errorf("%w: --revoke-for must be in (0, %v]", errUsage, agent.MaxSuspend)
	}
	g := &gamedayClient{upstream: *upstream, http: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", *sock)
		}}}}
	rep := &GamedayReport{Upstream: *upstream, Started: time.Now().UTC(), Reverted: true}
	runErr := gameday(ctx, g, rep, *aud, scopes, *outage, *requests, *interval, *recovery, *allowProd)
	if runErr == nil && rep.Reverted && *revokeEntry != "" {
		runErr = revokeRehearsal(ctx, rep, *workloadSock, *dataDir, *revokeEntry, *revokeFor)
	}
	rep.Passed = runErr == nil && rep.Reverted
	for _, s := range rep.SLOs {
		rep.Passed = rep.Passed && s.Pass
	}
	for _, p := range rep.Phases {
		rep.Passed = rep.Passed && p.OK
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		printGameday(stdout, rep)
	}
	if !rep.Reverted {
		fmt.Fprintf(stderr, "\n!!! nodeward gameday: THE FORCED OUTAGE OF UPSTREAM %q WAS NOT REVERTED.\n!!! The broker reverts it by itself at its deadline; to revert now, as root or the broker's user:\n!!!   curl --unix-socket %s -X DELETE -H '%s: true' 'http://broker/v1/breaker/force?upstream=%s'\n", *upstream, *sock, broker.RequestHeader, url.QueryEscape(*upstream))
		return fmt.Errorf("%w: %v", errNotReverted, runErr)
	}
	if runErr != nil {
		return runErr
	}
	if !rep.Passed {
		return errors.New("one or more phases or SLOs failed (see the report)")
	}
	return nil
}

// gameday runs the phases, filling rep. The forced outage is reverted on
// every path out of it once it started.
func gameday(ctx context.Context, g *gamedayClient, rep *GamedayReport, aud string, scopes []string,
	outage time.Duration, requests int, interval, recovery time.Duration, allowProd bool) (err error) {
	// 1. Preflight: privileged, and the breaker is closed (a game day never
	// starts on top of a real outage).
	st, a, err := g.force(ctx, http.MethodGet, url.Values{})
	if err != nil {
		return err
	}
	if a.status != http.StatusOK {
		rep.Phases = append(rep.Phases, GamedayPhase{Name: "preflight", Detail: fmt.Sprintf("HTTP %d %s: %s", a.status, a.errCode, a.desc)})
		return fmt.Errorf("preflight: HTTP %d %s: %s", a.status, a.errCode, a.desc)
	}
	if st.State != "closed" || st.Forced {
		rep.Phases = append(rep.Phases, GamedayPhase{Name: "preflight", Detail: "breaker is " + st.State + "; a game day starts only from a closed breaker"})
		return fmt.Errorf("preflight: the breaker of %q is %s; not starting", g.upstream, st.State)
	}
	if st.Environment == "production" && !allowProd {
		rep.Phases = append(rep.Phases, GamedayPhase{Name: "preflight", Detail: "environment: production; pass --allow-production to rehearse here"})
		return fmt.Errorf("refusing: the broker says environment: production; pass --allow-production to rehearse on this node")
	}
	rep.Phases = append(rep.Phases, GamedayPhase{Name: "preflight", OK: true, Detail: "breaker closed, environment " + orNone(st.Environment)})

	// 2. Warm: the token users of this node hold is in the cache.
	a, err = g.token(ctx, aud, scopes)
	if err != nil {
		return err
	}
	if a.status != http.StatusOK {
		rep.Phases = append(rep.Phases, GamedayPhase{Name: "warm", Requests: 1, Detail: fmt.Sprintf("HTTP %d %s: %s", a.status, a.errCode, a.desc)})
		return fmt.Errorf("warm: HTTP %d %s: %s", a.status, a.errCode, a.desc)
	}
	rep.Phases = append(rep.Phases, GamedayPhase{Name: "warm", OK: true, Requests: 1, Detail: "pre-warmed token cached"})
	var nonce [6]byte
	_, _ = rand.Read(nonce[:])
	missAud := "nodeward-gameday-" + hex.EncodeToString(nonce[:]) // never cached: what a new user sees

	// 3. Outage: the breaker forced open; from here on, revert on every path.
	q := url.Values{"duration": {outage.String()}}
	if allowProd {
		q.Set("confirm_production", "true")
	}
	st, a, err = g.force(ctx, http.MethodPost, q)
	if err != nil {
		// The request may have landed: revert anyway (the broker would at
		// its deadline).
		if _, rerr := g.revert(); rerr != nil {
			rep.Reverted = false
			return fmt.Errorf("force: %w; revert: %v", err, rerr)
		}
		return fmt.Errorf("force: %w", err)
	}
	if a.status != http.StatusOK {
		rep.Phases = append(rep.Phases, GamedayPhase{Name: "outage", Detail: fmt.Sprintf("force refused: HTTP %d %s: %s", a.status, a.errCode, a.desc)})
		return fmt.Errorf("force refused: HTTP %d %s: %s", a.status, a.errCode, a.desc)
	}
	forcedUntil := time.Now().Add(outage)
	if st.ForcedUntil != nil {
		forcedUntil = *st.ForcedUntil
	}
	defer func() {
		rst, rerr := g.revert()
		ph := GamedayPhase{Name: "revert", OK: rerr == nil, Detail: "breaker " + rst.State}
		if rerr != nil {
			rep.Reverted = false
			ph.Detail = rerr.Error()
			if err == nil {
				err = rerr
			}
		}
		rep.Phases = append(rep.Phases, ph)
		if rerr == nil && err == nil {
			err = recoveryPhase(ctx, g, rep, missAud, scopes, recovery)
		}
	}()
	warm := GamedayPhase{Name: "outage: pre-warmed token", OK: true}
	miss := GamedayPhase{Name: "outage: token not cached", OK: true, RetryAfter: true}
	var warmLat, missLat []time.Duration
	missEvery := max(requests/10, 1)
	for i := range requests {
		if ctx.Err() != nil {
			return fmt.Errorf("interrupted: %w", ctx.Err())
		}
		if time.Until(forcedUntil) < time.Second {
			break // never measure past the broker's own deadline
		}
		a, err := g.token(ctx, aud, scopes)
		if err != nil {
			return err
		}
		count(&warm, a)
		warmLat = append(warmLat, a.took)
		if i%missEvery == 0 {
			a, err := g.token(ctx, missAud, scopes)
			if err != nil {
				return err
			}
			count(&miss, a)
			miss.RetryAfter = miss.RetryAfter && (a.status != http.StatusServiceUnavailable || a.retryAfter != "")
			missLat = append(missLat, a.took)
		}
		if interval > 0 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("interrupted: %w", ctx.Err())
			case <-time.After(interval):
			}
		}
	}
	setLatency(&warm, warmLat)
	setLatency(&miss, missLat)
	warm.OK = warm.Requests > 0 && warm.FromCache == warm.Requests
	warm.Detail = fmt.Sprintf("%d of %d served from cache", warm.FromCache, warm.Requests)
	miss.OK = miss.Requests > 0 && miss.Status503 == miss.Requests && miss.RetryAfter
	miss.Detail = fmt.Sprintf("%d of %d answered 503 with Retry-After (expected during an outage)", miss.Status503, miss.Requests)
	rep.Phases = append(rep.Phases, warm, miss)
	ratio := 0.0
	if warm.Requests > 0 {
		ratio = float64(warm.FromCache) / float64(warm.Requests)
	}
	rep.SLOs = append(rep.SLOs,
		GamedaySLO{Name: "issuance success (cached tokens during the outage)", Objective: ">= 99.9 %",
			Measured: fmt.Sprintf("%.2f %%", ratio*100), Pass: warm.Requests > 0 && ratio >= gamedayIssuanceSLO},
		GamedaySLO{Name: "exchange latency p95 (during the outage)", Objective: "< 200 ms",
			Measured: fmt.Sprintf("%.1f ms", warm.P95MS), Pass: warm.Requests > 0 && warm.P95MS < float64(gamedayLatencyP95.Milliseconds())})
	return nil
}

// recoveryPhase measures, after the revert, the time until the token that
// was refused during the outage is fetched fresh from the IdP.
func recoveryPhase(ctx context.Context, g *gamedayClient, rep *GamedayReport, missAud string, scopes []string, timeout time.Duration) error {
	start := time.Now()
	ph := GamedayPhase{Name: "recovery: fresh upstream token"}
	for {
		a, err := g.token(ctx, missAud, scopes)
		if err != nil {
			return err
		}
		count(&ph, a)
		if a.status == http.StatusOK {
			ph.OK, ph.SecondsTo = true, time.Since(start).Seconds()
			ph.Detail = fmt.Sprintf("fresh token after %.2fs and %d requests", ph.SecondsTo, ph.Requests)
			break
		}
		if time.Since(start) > timeout {
			ph.Detail = fmt.Sprintf("no fresh token within %v (last: HTTP %d %s)", timeout, a.status, a.errCode)
			break
		}
		select {
		case <-ctx.Done():
			ph.Detail = "interrupted"
			rep.Phases = append(rep.Phases, ph)
			return ctx.Err()
		case <-time.After(250 * time.Millisecond): // retry pacing
		}
	}
	ph.FromCache = 0 // a recovery answer is fresh, not "from cache"
	rep.Phases = append(rep.Phases, ph)
	rep.SLOs = append(rep.SLOs, GamedaySLO{Name: "recovery after the IdP returns", Objective: "within --recovery-timeout (" + timeout.String() + ")",
		Measured: fmt.Sprintf("%.2f s", ph.SecondsTo), Pass: ph.OK})
	return nil
}

func count(p *GamedayPhase, a brokerAnswer) {
	p.Requests++
	switch a.status {
	case http.StatusOK:
		p.FromCache++
	case http.StatusServiceUnavailable:
		p.Status503++
	default:
		p.Other++
	}
}

func setLatency(p *GamedayPhase, d []time.Duration) {
	p.P50MS, p.P95MS, p.P99MS = percentile(d, 0.50), percentile(d, 0.95), percentile(d, 0.99)
}

func orNone(s string) string {
	if s == "" {
		return "(not set)"
	}
	return s
}

func printGameday(w io.Writer, r *GamedayReport) {
	fmt.Fprintf(w, "nodeward game day: IdP outage of upstream %q, started %s\n\n", r.Upstream, r.Started.Format(time.RFC3339))
	for _, p := range r.Phases {
		mark := "ok  "
		if !p.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "  [%s] %-32s %s\n", mark, p.Name, p.Detail)
		if p.Requests > 0 && strings.HasPrefix(p.Name, "outage") {
			fmt.Fprintf(w, "         requests %d: 200 %d, 503 %d, other %d; latency p50 %.1f ms, p95 %.1f ms, p99 %.1f ms\n",
				p.Requests, p.FromCache, p.Status503, p.Other, p.P50MS, p.P95MS, p.P99MS)
		}
	}
	fmt.Fprintln(w, "\nSLOs:")
	for _, s := range r.SLOs {
		v := "PASS"
		if !s.Pass {
			v = "FAIL"
		}
		fmt.Fprintf(w, "  %s  %-52s objective %-14s measured %s\n", v, s.Name, s.Objective, s.Measured)
	}
	switch {
	case !r.Reverted:
		fmt.Fprintln(w, "\nRESULT: NOT REVERTED (see stderr)")
	case r.Passed:
		fmt.Fprintln(w, "\nRESULT: PASS (breaker reverted)")
	default:
		fmt.Fprintln(w, "\nRESULT: FAIL (breaker reverted)")
	}
}
