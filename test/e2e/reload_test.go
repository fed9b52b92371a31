package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/nodeward/nodeward/test/testutil"
)

// TestReloadUnderLoad: streaming and fetching clients keep going while
// SIGHUP swaps the entries again and again. No stream breaks, no fetch
// fails, every streamed message is one whole policy (never a mix of two),
// and once an identity is revoked it is absent from every stream's next
// message.
func TestReloadUnderLoad(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := testutil.SocketDir(t)
	entry := func(name string) string {
		return fmt.Sprintf("  - spiffe_id: spiffe://example.org/%s\n    selectors: [unix:uid:%d, \"unix:path:%s\"]\n    hint: %s\n", name, os.Geteuid(), self, name)
	}
	policies := []string{"entries:\n" + entry("a") + entry("b"), "entries:\n" + entry("a") + entry("c")}
	want := []string{"a,b", "a,c"}
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", policies[0])
	agent := testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 10*time.Second)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type watcher struct {
		mu     sync.Mutex
		seen   []string // ID sets, in order
		errors int
	}
	watchers := make([]*watcher, 8)
	var wg sync.WaitGroup
	for i := range watchers {
		w := &watcher{}
		watchers[i] = w
		c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+sock))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		wg.Go(func() {
			_ = c.WatchX509Context(ctx, watchFuncs{
				update: func(xc *workloadapi.X509Context) {
					var ids []string
					for _, s := range xc.SVIDs {
						ids = append(ids, strings.TrimPrefix(s.ID.String(), "spiffe://example.org/"))
					}
					slices.Sort(ids)
					w.mu.Lock()
					w.seen = append(w.seen, strings.Join(ids, ","))
					w.mu.Unlock()
				},
				fail: func(err error) {
					if ctx.Err() == nil {
						w.mu.Lock()
						w.errors++
						w.mu.Unlock()
					}
				},
			})
		})
	}
	var fetches, fetchFailures atomic.Int64
	for range 4 {
		c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+sock))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		wg.Go(func() {
			for ctx.Err() == nil {
				_, err := c.FetchX509SVID(ctx)
				if ctx.Err() != nil {
					return
				}
				fetches.Add(1)
				if err != nil {
					fetchFailures.Add(1)
				}
			}
		})
	}
	last := func(w *watcher) string {
		w.mu.Lock()
		defer w.mu.Unlock()
		if len(w.seen) == 0 {
			return ""
		}
		return w.seen[len(w.seen)-1]
	}
	waitAll := func(state string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for _, w := range watchers {
			for last(w) != state {
				if time.Now().After(deadline) {
					t.Fatalf("a stream's last message is %q, want %q", last(w), state)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
	waitAll(want[0])
	const reloads = 20
	for i := 1; i <= reloads; i++ {
		testutil.WriteConfig(t, dir, "example.org", policies[i%2])
		if err := agent.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		// The revoked identity (b or c) is gone from every stream's next
		// message: each stream's latest state is the new policy.
		waitAll(want[i%2])
	}
	cancel()
	wg.Wait()
	for i, w := range watchers {
		if w.errors != 0 {
			t.Errorf("stream %d broke %d times during reloads", i, w.errors)
		}
		for _, s := range w.seen {
			if s != want[0] && s != want[1] {
				t.Errorf("stream %d saw %q: not one whole policy", i, s)
			}
		}
		if len(w.seen) < reloads+1 {
			t.Errorf("stream %d saw %d messages over %d reloads", i, len(w.seen), reloads)
		}
	}
	if n := fetchFailures.Load(); n != 0 || fetches.Load() == 0 {
		t.Errorf("%d of %d fetches failed during reloads", n, fetches.Load())
	}
	t.Logf("%d reloads, %d fetches, 0 failures", reloads, fetches.Load())
}

type watchFuncs struct {
	update func(*workloadapi.X509Context)
	fail   func(error)
}

func (w watchFuncs) OnX509ContextUpdate(c *workloadapi.X509Context) { w.update(c) }
func (w watchFuncs) OnX509ContextWatchError(err error)              { w.fail(err) }
