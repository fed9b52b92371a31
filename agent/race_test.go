package agent

import (
	"sync"
	"testing"
)

// Status (GET /v1/status) runs while SIGHUP reloads swap the config: the
// config must be read under the agent's lock (run with -race).
func TestStatusDuringReload(t *testing.T) {
	cfg := testConfig(t, "entries:\n  - spiffe_id: spiffe://example.org/a\n    selectors: [\"unix:uid:1\"]\n")
	r := startAgent(t, cfg)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for range 100 {
			next := *cfg
			if err := r.agent.Reload(&next); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for range 100 {
			if st := r.agent.Status(); st.Socket != cfg.SocketPath || !st.Ready {
				t.Errorf("status during reload: socket %q ready %v (%s)", st.Socket, st.Ready, st.Degraded)
				return
			}
			_ = r.agent.Summary()
		}
	}()
	wg.Wait()
}
