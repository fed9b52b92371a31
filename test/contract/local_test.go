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
	stop      func()

	mu      sync.Mutex
	entries map[string]Entry
	n       int
	fedBoot string // bootstrap bundle of other.test, once Federation was called
}

func (h *localHarness) TrustDomain() spiffeid.TrustDomain {
	return spiffeid.RequireTrustDomainFromString("contract.local")
}

func (h *localHarness) config(t *testing.T) *config.Agent {
	t.Helper()
	var sb strings.Builder
	fmt.Fprintf(&sb, "trust_domain: contract.local\nsocket_path: %s\ndata_dir: %s\naudit_log: %s\n",
		h.sock, filepath.Join(h.dir, "data"), filepath.Join(h.dir, "audit.log"))
	if h.fedBoot != "" {
		// other.test's endpoint does not answer: its bundle comes from the
		// bootstrap file, as on a node started offline.
		fmt.Fprintf(&sb, "federation:\n  federates_with:\n    other.test:\n      url: https://127.0.0.1:1\n      profile: https_spiffe\n      endpoint_spiffe_id: spiffe://other.test/nodeward/bundle-endpoint\n      bundle: %s\n", h.fedBoot)
	}
	sb.WriteString("entries:\n")
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
		if len(e.FederatesWith) > 0 {
			fmt.Fprintf(&sb, "    federates_with: [%s]\n", strings.Join(e.FederatesWith, ", "))
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
	h.restart(t)
	return "unix://" + h.sock
}

// restart (re)starts the agent with the current config; the socket path
// stays, so clients reconnect.
func (h *localHarness) restart(t *testing.T) {
	if h.stop != nil {
		h.stop()
	}
	a, err := agent.New(h.config(t), slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatal(err)
	}
	h.a = a
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent: %v", err)
			}
		})
	}
	t.Cleanup(h.stop)
	select {
	case <-a.Serving():
	case err := <-done:
		t.Fatalf("agent stopped: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("agent did not start serving")
	}
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

// Federation restarts the agent with a federation section (a federation
// change needs a restart) whose peer other.test is known from its
// bootstrap bundle.
func (h *localHarness) Federation(t *testing.T) spiffeid.TrustDomain {
	p := filepath.Join(h.dir, "other.test.pem")
	if err := os.WriteFile(p, selfSignedPEM(t, "other.test"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	h.fedBoot = p
	h.mu.Unlock()
	h.restart(t)
	return spiffeid.RequireTrustDomainFromString("other.test")
}

func (h *localHarness) Propagation() time.Duration { return 0 }

// TestLocalSource runs the contract against standalone mode.
func TestLocalSource(t *testing.T) {
	Run(t, &localHarness{})
}
