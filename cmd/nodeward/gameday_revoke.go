package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nodeward/nodeward/agent"
	"github.com/nodeward/nodeward/internal/atomicfile"
)

// gamedayTimeToRevoke is the time-to-revoke objective (docs/operating.md).
const gamedayTimeToRevoke = 5 * time.Minute

// revokeRehearsal takes entry away through the agent's suspend channel
// (data_dir/suspend, see agent.SuspendDir) for at most hold, measures how
// long until this process's own Workload API stream loses the SVID (time
// to revoke), then resumes it and measures until it is back. This process
// must be a workload of the entry. The agent ends the suspension by itself
// at the deadline even if gameday dies.
func revokeRehearsal(ctx context.Context, rep *GamedayReport, socket, dataDir, entry string, hold time.Duration) error {
	ph := GamedayPhase{Name: "revocation of " + entry}
	ctx, cancel := context.WithTimeout(ctx, hold+time.Minute)
	defer cancel()
	c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+socket))
	if err != nil {
		return fmt.Errorf("revocation: workload API: %w", err)
	}
	defer c.Close()
	updates := make(chan int, 16) // number of SVIDs in each update; -1: no identity
	w := &svidCounter{ch: updates}
	go func() { _ = c.WatchX509Context(ctx, w) }()
	before, err := nextCount(ctx, updates, func(n int) bool { return true })
	if err != nil || before <= 0 {
		ph.Detail = "this process holds no SVID: run gameday as a workload of the test entry (see docs/operating.md)"
		rep.Phases = append(rep.Phases, ph)
		return errors.New("revocation: " + ph.Detail)
	}
	path := filepath.Join(dataDir, agent.SuspendDir, entry)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("revocation: %w", err)
	}
	start := time.Now()
	if err := atomicfile.Write(path, []byte(hold.String()), 0o600); err != nil {
		return fmt.Errorf("revocation: request: %w", err)
	}
	_, err = nextCount(ctx, updates, func(n int) bool { return n < before })
	revoked := time.Since(start)
	// Resume on every path (the agent would at its deadline).
	resumeErr := atomicfile.Write(path, []byte("resume"), 0o600)
	if err != nil {
		ph.Detail = fmt.Sprintf("the SVID was not taken away within %v: %v", hold, err)
		rep.Phases = append(rep.Phases, ph)
		rep.SLOs = append(rep.SLOs, GamedaySLO{Name: "time to revoke", Objective: "< 5 min", Measured: "not revoked", Pass: false})
		return nil
	}
	restart := time.Now()
	_, rerr := nextCount(ctx, updates, func(n int) bool { return n >= before })
	ph.SecondsTo = revoked.Seconds()
	ph.OK = resumeErr == nil && rerr == nil
	ph.Detail = fmt.Sprintf("SVID gone from this process's stream %.2fs after the request; back %.2fs after resume", revoked.Seconds(), time.Since(restart).Seconds())
	if !ph.OK {
		ph.Detail = fmt.Sprintf("SVID gone after %.2fs, but not back after resume (%v %v); the agent resumes it at its deadline (%v)", revoked.Seconds(), resumeErr, rerr, hold)
	}
	rep.Phases = append(rep.Phases, ph)
	rep.SLOs = append(rep.SLOs, GamedaySLO{Name: "time to revoke (entry taken away -> workload loses it)", Objective: "< 5 min",
		Measured: fmt.Sprintf("%.2f s", revoked.Seconds()), Pass: revoked < gamedayTimeToRevoke})
	return nil
}

// svidCounter reports the number of SVIDs of each X.509 context update.
type svidCounter struct{ ch chan int }

func (s *svidCounter) OnX509ContextUpdate(xc *workloadapi.X509Context) {
	select {
	case s.ch <- len(xc.SVIDs):
	default:
	}
}

func (s *svidCounter) OnX509ContextWatchError(err error) {
	if status.Code(err) == codes.PermissionDenied {
		select {
		case s.ch <- -1:
		default:
		}
	}
}

// nextCount waits for an update for which ok holds.
func nextCount(ctx context.Context, ch <-chan int, ok func(int) bool) (int, error) {
	for {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case n := <-ch:
			if ok(n) {
				return n, nil
			}
		}
	}
}
