package agent

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nodeward/nodeward/agent/policy"
	"github.com/nodeward/nodeward/internal/audit"
	"github.com/nodeward/nodeward/internal/safefs"
)

// SuspendDir, in data_dir, takes a game day's revocation rehearsal: a file
// named by an entry id holding a duration ("60s": stop issuing that entry
// for that long) or "resume". Only who can write data_dir (root or the
// agent's user; the directory's owner and mode are checked) can suspend.
// A suspension lives in memory only: it ends at its deadline, on "resume",
// or when the agent restarts, so a killed game day never leaves an entry
// revoked.
const SuspendDir = "suspend"

// MaxSuspend bounds one suspension.
const MaxSuspend = 10 * time.Minute

// suspendPoll is how often the agent looks for suspend requests.
const suspendPoll = 200 * time.Millisecond

// suspensions are the entries a game day took away for now.
type suspensions struct {
	mu    sync.Mutex
	until map[string]time.Time
	n     atomic.Int32 // len(until): the request path reads only this when 0
}

// unsuspended drops suspended entries (a no-op while none is).
func (a *Agent) unsuspended(entries []*policy.Entry) []*policy.Entry {
	if a.susp.n.Load() == 0 {
		return entries
	}
	a.susp.mu.Lock()
	defer a.susp.mu.Unlock()
	out := entries[:0:0]
	for _, e := range entries {
		if _, ok := a.susp.until[e.ID]; !ok {
			out = append(out, e)
		}
	}
	return out
}

// suspendLoop applies suspend requests and ends suspensions at their
// deadline until ctx is done; open streams are re-evaluated at once.
func (a *Agent) suspendLoop(ctx context.Context) {
	t := time.NewTicker(suspendPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changed := a.applySuspendRequests()
		now := time.Now()
		a.susp.mu.Lock()
		for id, until := range a.susp.until {
			if !now.Before(until) {
				delete(a.susp.until, id)
				changed = true
				a.log.Info("entry suspension ended (deadline)", "entry", id)
				a.obs.record(audit.Record{Event: "resume", Decision: "allow", Reason: "game day: deadline", EntryID: id})
			}
		}
		a.susp.n.Store(int32(len(a.susp.until)))
		a.susp.mu.Unlock()
		if changed {
			a.store.Reevaluate()
		}
	}
}

// applySuspendRequests reads and removes the requests in data_dir/suspend;
// true when one changed a suspension.
func (a *Agent) applySuspendRequests() bool {
	dir := filepath.Join(a.config().DataDir, SuspendDir)
	st, err := os.Lstat(dir)
	if err != nil {
		return false
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); !ok || !st.IsDir() || st.Mode().Perm()&0o022 != 0 ||
		(sys.Uid != 0 && int(sys.Uid) != os.Geteuid()) {
		a.log.Warn("game day: suspend directory ignored: it must be a directory owned by root or the agent's user, not group- or other-writable", "dir", dir)
		return false
	}
	names, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	changed := false
	for _, n := range names {
		id := n.Name()
		if strings.HasPrefix(id, ".") {
			continue // a request being written (atomicfile's temp name)
		}
		path := filepath.Join(dir, id)
		req, err := readRequest(path)
		_ = os.Remove(path)
		if err != nil {
			a.log.Warn("game day: ignored suspend request", "entry", id, "err", err)
			continue
		}
		if _, ok := a.inv.Record(id); !ok {
			a.log.Warn("game day: ignored suspend request: no such entry", "entry", id)
			continue
		}
		a.susp.mu.Lock()
		if a.susp.until == nil {
			a.susp.until = map[string]time.Time{}
		}
		if req == "resume" {
			if _, ok := a.susp.until[id]; ok {
				delete(a.susp.until, id)
				changed = true
				a.log.Info("entry suspension ended (resume)", "entry", id)
				a.obs.record(audit.Record{Event: "resume", Decision: "allow", Reason: "game day: resume", EntryID: id})
			}
		} else if d, err := time.ParseDuration(req); err == nil && d > 0 && d <= MaxSuspend {
			a.susp.until[id] = time.Now().Add(d)
			changed = true
			a.log.Warn("entry suspended for a game day: no longer issuing", "entry", id, "for", d)
			a.obs.record(audit.Record{Event: "suspend", Decision: "deny", Reason: "game day: for " + d.String(), EntryID: id})
		} else {
			a.log.Warn("game day: ignored suspend request: want a duration up to 10m or resume", "entry", id)
		}
		a.susp.n.Store(int32(len(a.susp.until)))
		a.susp.mu.Unlock()
	}
	return changed
}

// readRequest reads a small request file (a regular file, not a symlink).
func readRequest(path string) (string, error) {
	f, err := safefs.OpenFile(path, false)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 65))
	if err != nil {
		return "", err
	}
	if len(b) > 64 {
		return "", fmt.Errorf("request longer than 64 bytes")
	}
	return strings.TrimSpace(string(b)), nil
}
