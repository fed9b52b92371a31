package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nodeward/nodeward/test/swtpm"
	"github.com/nodeward/nodeward/test/testutil"
)

// readyz returns /readyz's status code and body (0 when unreachable).
func readyz(admin string) (int, string) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + admin + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func pollUntil(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// expiryWatcher records every X.509 update an open go-spiffe stream gets,
// and any SVID that was already expired (or nearly) when it arrived.
type expiryWatcher struct {
	mu      sync.Mutex
	updates int
	bad     []string
}

func (w *expiryWatcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.updates++
	now := time.Now()
	for _, sv := range c.SVIDs {
		if na := sv.Certificates[0].NotAfter; !na.After(now) {
			w.bad = append(w.bad, fmt.Sprintf("%s received %s, expired %s", sv.ID, now.Format(time.RFC3339Nano), na))
		}
		for _, ic := range sv.Certificates[1:] {
			if !ic.NotAfter.After(now) {
				w.bad = append(w.bad, fmt.Sprintf("%s received %s with an intermediate expired %s", sv.ID, now.Format(time.RFC3339Nano), ic.NotAfter))
			}
		}
	}
}

func (w *expiryWatcher) OnX509ContextWatchError(error) {}

func (w *expiryWatcher) state() (int, []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.updates, append([]string(nil), w.bad...)
}

// TestHungTPMNeverServesExpiredSVIDs (issue 11, item 17): with ca.key tpm,
// the swtpm is stopped (SIGSTOP) past the intermediate's life. An open
// go-spiffe stream never receives an expired SVID, a fetch gets
// Unavailable, /readyz turns 503 with a reason; after SIGCONT the agent
// re-signs the intermediate and recovers within seconds.
func TestHungTPMNeverServesExpiredSVIDs(t *testing.T) {
	sim := swtpm.StartTCP(t)
	stopped := false
	self, err := os.Executable() // the go-spiffe client runs in this process
	if err != nil {
		t.Fatal(err)
	}
	dir := testutil.SocketDir(t)
	admin := "127.0.0.1:" + testutil.FreePort(t)
	extra := fmt.Sprintf("admin_listen: %s\ntpm:\n  address: %s\nca:\n  key: tpm\n  intermediate_ttl: 16s\nentries:\n  - spiffe_id: spiffe://example.org/w\n    selectors: [unix:uid:%d, \"unix:path:%s\"]\n    x509_ttl: 1h\n",
		admin, sim.Addr, os.Geteuid(), self)
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", extra)
	a := testutil.StartAgent(t, bin, cfg, sock)
	t.Cleanup(func() { // before the agent is stopped (cleanups run last first)
		if stopped {
			_ = syscall.Kill(sim.PID, syscall.SIGCONT)
		}
	})
	testutil.WaitServing(t, sock, 20*time.Second)
	addr := workloadapi.WithAddr("unix://" + sock)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client, err := workloadapi.New(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	w := &expiryWatcher{}
	watchDone := make(chan struct{})
	go func() { defer close(watchDone); _ = client.WatchX509Context(ctx, w) }()
	pollUntil(t, "the first stream update", 10*time.Second, func() bool { n, _ := w.state(); return n > 0 })
	if code, body := readyz(admin); code != http.StatusOK {
		t.Fatalf("readyz before the hang: %d %s", code, body)
	}

	if err := syscall.Kill(sim.PID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped = true
	hungAt := time.Now()
	var body string
	pollUntil(t, "/readyz 503 after the intermediate expired", 40*time.Second, func() bool {
		var code int
		code, body = readyz(admin)
		return code == http.StatusServiceUnavailable
	})
	if !strings.Contains(body, "intermediate") {
		t.Errorf("readyz 503 without a reason: %q", body)
	}
	// A fetch gets Unavailable once the last SVID minted is used up, and
	// never an expired SVID before that.
	pollUntil(t, "a fetch to get Unavailable", 10*time.Second, func() bool {
		fctx, fcancel := context.WithTimeout(ctx, 5*time.Second)
		defer fcancel()
		sv, err := workloadapi.FetchX509SVID(fctx, addr)
		if err == nil && !sv.Certificates[0].NotAfter.After(time.Now()) {
			t.Fatalf("fetch got an expired SVID (not after %v)", sv.Certificates[0].NotAfter)
		}
		return status.Code(err) == codes.Unavailable
	})
	// Stay hung a while longer: the agent must not spin minting.
	before := strings.Count(a.Log(), "minted X.509-SVID")
	pollUntil(t, "25s of hang", 30*time.Second, func() bool { return time.Since(hungAt) > 25*time.Second })
	if n := strings.Count(a.Log(), "minted X.509-SVID") - before; n > 0 {
		t.Errorf("minted %d SVIDs while the intermediate was expired", n)
	}

	if err := syscall.Kill(sim.PID, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stopped = false
	resumed := time.Now()
	pollUntil(t, "/readyz 200 after SIGCONT", 15*time.Second, func() bool { c, _ := readyz(admin); return c == http.StatusOK })
	t.Logf("recovered %s after SIGCONT", time.Since(resumed).Round(time.Millisecond))
	var got *time.Time
	pollUntil(t, "a valid SVID after recovery", 15*time.Second, func() bool {
		fctx, fcancel := context.WithTimeout(ctx, 2*time.Second)
		defer fcancel()
		sv, err := workloadapi.FetchX509SVID(fctx, addr)
		if err != nil {
			return false
		}
		na := sv.Certificates[0].NotAfter
		got = &na
		return true
	})
	if time.Until(*got) < 5*time.Second {
		t.Fatalf("SVID after recovery expires %v", *got)
	}
	cancel()
	<-watchDone
	if _, bad := w.state(); len(bad) > 0 {
		t.Fatalf("expired SVIDs were pushed on an open stream:\n%s", strings.Join(bad, "\n"))
	}
}

// socketFDs counts the open sockets of pid (0 when it is gone).
func socketFDs(pid int) int {
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	n := 0
	for _, fd := range fds {
		if l, err := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), fd.Name())); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

// TestStartAgainstHungTPM (item 17): a start against a stopped swtpm fails
// at tpm.startup_timeout, and SIGTERM during it ends the agent at once.
func TestStartAgainstHungTPM(t *testing.T) {
	sim := swtpm.StartTCP(t)
	if err := syscall.Kill(sim.PID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(sim.PID, syscall.SIGCONT) })

	t.Run("startup_timeout", func(t *testing.T) {
		dir := testutil.SocketDir(t)
		cfg, _ := testutil.WriteConfig(t, dir, "example.org", fmt.Sprintf("tpm:\n  address: %s\n  startup_timeout: 3s\nca:\n  key: tpm\n", sim.Addr))
		start := time.Now()
		_, errOut, code := testutil.Run(t, bin, nil, "agent", "--config", cfg)
		took := time.Since(start)
		if code == 0 || took < 3*time.Second || took > 8*time.Second {
			t.Fatalf("start against a hung TPM: exit %d after %s (want failure at ~3s): %s", code, took, errOut)
		}
		t.Logf("exit %d after %s: %s", code, took.Round(time.Millisecond), strings.TrimSpace(errOut))
	})

	t.Run("SIGTERM", func(t *testing.T) {
		dir := testutil.SocketDir(t)
		cfg, _ := testutil.WriteConfig(t, dir, "example.org", fmt.Sprintf("tpm:\n  address: %s\n  startup_timeout: 5m\nca:\n  key: tpm\n", sim.Addr))
		logf, err := os.Create(filepath.Join(t.TempDir(), "agent.log"))
		if err != nil {
			t.Fatal(err)
		}
		defer logf.Close()
		cmd := exec.Command(bin, "agent", "--config", cfg)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
		// Started and waiting on the TPM: it holds a socket to swtpm.
		pollUntil(t, "the agent to connect to the TPM", 10*time.Second, func() bool { return socketFDs(cmd.Process.Pid) > 0 })
		sent := time.Now()
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-done:
			out, _ := os.ReadFile(logf.Name())
			t.Logf("exited %s after SIGTERM (%s): %s", time.Since(sent).Round(time.Millisecond), cmd.ProcessState, strings.TrimSpace(string(out)))
		case <-time.After(5 * time.Second):
			out, _ := os.ReadFile(logf.Name())
			t.Fatalf("agent ignored SIGTERM during start against a hung TPM\n%s", out)
		}
	})
}
