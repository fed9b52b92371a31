package spire_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/nodeward/nodeward/agent/spire"
	spiretest "github.com/nodeward/nodeward/test/spire"
)

// TestCallsDuringRenewalDoNotFail: each renewal of the agent SVID replaces
// the mTLS connection and closes the old one; calls in flight on it run
// again on the new connection instead of failing (Canceled, Unavailable,
// or AGENT_NOT_ACTIVE once the new SVID was used), which a sync would
// count as the server being unreachable.
func TestCallsDuringRenewalDoNotFail(t *testing.T) {
	s := spiretest.Start(t, spiretest.Options{TrustDomain: "conn.test"})
	c := newClient(t, s, t.TempDir(), spire.JoinToken(s.TokenGenerate("")))
	defer c.Close()
	if err := c.Start(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctxT(t))
	var (
		wg     sync.WaitGroup
		calls  atomic.Int64
		failed atomic.Value
	)
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				if _, err := c.SyncEntries(ctx); err != nil && ctx.Err() == nil {
					failed.Store(err)
					return
				}
				calls.Add(1)
			}
		})
	}
	for range 8 {
		if err := c.Rotate(ctxT(t)); err != nil {
			t.Fatalf("renew: %v", err)
		}
		// A call with the new SVID makes the server take it as the
		// node's current one before the next renewal (renewals are half
		// an SVID's life apart, not back to back).
		if _, err := c.SyncEntries(ctxT(t)); err != nil {
			t.Fatalf("a call after the renewal: %v", err)
		}
	}
	cancel()
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatalf("a call during a renewal failed: %v", err)
	}
	if calls.Load() == 0 {
		t.Fatal("no call ran during the renewals")
	}
	t.Logf("%d syncs during 8 renewals, none failed", calls.Load())
}
