package contract

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodeward/nodeward/agent"
	"github.com/nodeward/nodeward/agent/config"
)

// localHarness runs the agent in standalone mode (the local CA): entries
// come from its config, changed by a reload as `nodeward agent` does on
// SIGHUP.
type localHarness struct {
	dir, sock string
	a         *agent.Agent

	mu      sync.Mutex
	entries map[string]Entry
	n       int
}

func (h *localHarness) TrustDomain() spiffeid.TrustDomain {
	return spiffeid.RequireTrustDomainFromString("contract.local")
}

func (h *localHarness) config(t *testing.T) *config.Agent {
	t.Helper()
	var sb strings.Builder
	fmt.Fprintf(&sb, "trust_domain: contract.local\nsocket_path: %s\ndata_dir: %s\naudit_log: %s\nentries:\n",
		h.sock, filepath.Join(h.dir, "data"), filepath.Join(h.dir, "audit.log"))
	ids := make([]string, 0, len(h.entries))
	for id := range h.entries {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	if len(ids) == 0 {
		sb.WriteString("  []\n")
	}
	for _, id := range ids {
		e := h.entries[id]
		quoted := make([]string, len(e.Selectors))
		for i, s := range e.Selectors {
			quoted[i] = fmt.Sprintf("%q", s)
		}
		// Entries of one caller need distinct hints (the ambiguity guardrail).
		fmt.Fprintf(&sb, "  - id: %s\n    spiffe_id: spiffe://contract.local%s\n    hint: %s\n    selectors: [%s]\n",
			id, e.Path, id, strings.Join(quoted, ", "))
		if e.X509TTL > 0 {
			fmt.Fprintf(&sb, "    x509_ttl: %s\n", e.X509TTL)
		}
	}
	cfg, err := config.Parse(filepath.Join(h.dir, "agent.yaml"), []byte(sb.String()))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, sb.String())
	}
	return cfg
}

func (h *localHarness) Start(t *testing.T) string {
	dir, err := os.MkdirTemp("", "nodeward-contract-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	h.dir, h.sock, h.entries = dir, filepath.Join(dir, "workload.sock"), map[string]Entry{}
	a, err := agent.New(h.config(t), slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatal(err)
	}
	h.a = a
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	select {
	case <-a.Serving():
	case err := <-done:
		t.Fatalf("agent stopped: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("agent did not start serving")
	}
	return "unix://" + h.sock
}

func (h *localHarness) reload(t *testing.T) {
	t.Helper()
	if err := h.a.Reload(h.config(t)); err != nil {
		t.Fatalf("reload: %v", err)
	}
}

func (h *localHarness) AddEntry(t *testing.T, e Entry) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(e.FederatesWith) > 0 {
		t.Fatal("the local harness does not federate")
	}
	h.n++
	id := fmt.Sprintf("contract-%d", h.n)
	h.entries[id] = e
	h.reload(t)
	return id
}

func (h *localHarness) RemoveEntry(t *testing.T, id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.entries, id)
	h.reload(t)
}

func (h *localHarness) ShortX509TTL() time.Duration { return 8 * time.Second }

func (h *localHarness) Federation(*testing.T) spiffeid.TrustDomain { return spiffeid.TrustDomain{} }

func (h *localHarness) Propagation() time.Duration { return 0 }

// TestLocalSource runs the contract against standalone mode.
func TestLocalSource(t *testing.T) {
	Run(t, &localHarness{})
}
