package agent

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const cgroupRoot = "/sys/fs/cgroup"

// childFetchOnCue waits for a line on stdin, then fetches like childFetch:
// the test moves it into a cgroup in between.
func childFetchOnCue() {
	fmt.Println("ready")
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	childFetch()
}

// cgroupChild is a test-binary child that fetches an SVID on cue.
type cgroupChild struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

func startCgroupChild(t *testing.T, sock string) *cgroupChild {
	t.Helper()
	self, _ := os.Executable()
	cmd := exec.Command(self)
	cmd.Env = []string{childEnv + "=fetch-on-cue", "NODEWARD_TEST_SOCKET=" + sock}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &cgroupChild{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	t.Cleanup(func() { _ = stdin.Close(); _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if line, _ := c.out.ReadString('\n'); line != "ready\n" {
		t.Fatalf("child said %q", line)
	}
	return c
}

func (c *cgroupChild) fetch(t *testing.T) string {
	t.Helper()
	if _, err := io.WriteString(c.stdin, "go\n"); err != nil {
		t.Fatal(err)
	}
	line, err := c.out.ReadString('\n')
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	return strings.TrimSpace(line)
}

// moveInto creates the cgroup path under the hierarchy mounted at hier and
// moves pid into it. Cleanup moves the pid back to the root and removes the
// directories it created, deepest first.
func moveInto(t *testing.T, hier, path string, pid int) {
	t.Helper()
	var created []string
	dir := hier
	for _, part := range strings.Split(strings.Trim(path, "/"), "/") {
		dir = filepath.Join(dir, part)
		if err := os.Mkdir(dir, 0o755); err == nil {
			created = append(created, dir)
		} else if !os.IsExist(err) {
			t.Fatalf("mkdir %s: %v", dir, err)
		}
	}
	t.Cleanup(func() {
		_ = os.WriteFile(filepath.Join(hier, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644)
		for i := len(created) - 1; i >= 0; i-- {
			if err := os.Remove(created[i]); err != nil {
				t.Logf("cleanup %s: %v", created[i], err)
			}
		}
	})
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		t.Fatalf("move %d into %s: %v", pid, dir, err)
	}
}

func randHex(n int) string {
	b := make([]byte, n/2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// TestRealCgroupLayouts moves real child processes into real cgroups shaped
// like each layout and fetches their SVIDs through the go-spiffe client.
func TestRealCgroupLayouts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups and move processes (CI runs as root)")
	}
	unified := filepath.Join(cgroupRoot, "unified")
	if _, err := os.Stat(filepath.Join(unified, "cgroup.procs")); err != nil {
		unified = cgroupRoot // a pure cgroup v2 host
		if _, err := os.Stat(filepath.Join(unified, "cgroup.controllers")); err != nil {
			t.Skip("no writable cgroup v2 hierarchy at /sys/fs/cgroup/unified or /sys/fs/cgroup")
		}
	}
	named := filepath.Join(cgroupRoot, "systemd")
	cid := randHex(64)
	uid := fmt.Sprintf("%s-%s-4%s-8%s-%s", randHex(8), randHex(4), randHex(4)[1:], randHex(4)[1:], randHex(12))
	unit := "nodeward-test-" + randHex(8) + ".service"
	uidU := strings.ReplaceAll(uid, "-", "_")
	tests := []struct {
		name      string
		hier      string
		path      string
		selectors string // selectors of the matching entry, besides unix:uid
	}{
		{"systemd unit (v2)", unified, "/system.slice/" + unit, "systemd:unit:" + unit + ", systemd:slice:system.slice"},
		{"docker systemd driver", unified, "/system.slice/docker-" + cid + ".scope", "container:id:" + cid + ", container:runtime:docker"},
		{"k8s systemd driver + containerd", unified,
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope",
			"k8s:pod-uid:" + uid + ", k8s:qos:burstable, container:id:" + cid + ", container:runtime:containerd"},
		{"k8s cgroupfs (v1 name=systemd)", named, "/kubepods/besteffort/pod" + uid + "/" + cid, "k8s:pod-uid:" + uid + ", k8s:qos:besteffort, container:id:" + cid},
		{"podman rootful", unified, "/machine.slice/libpod-" + cid + ".scope", "container:runtime:podman, container:id:" + cid},
		{"exact cgroup path", unified, "/nodeward-test.slice/x-" + cid[:8] + ".scope", "cgroup:path:/nodeward-test.slice/x-" + cid[:8] + ".scope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := os.Stat(filepath.Join(tt.hier, "cgroup.procs")); err != nil {
				t.Skipf("hierarchy %s not mounted here", tt.hier)
			}
			entries := fmt.Sprintf("entries:\n  - spiffe_id: spiffe://%s/workload\n    selectors: [unix:uid:%d, %s]\n", td, os.Geteuid(), tt.selectors)
			cfg := testConfig(t, entries)
			startAgent(t, cfg)

			// Outside the cgroup: denied.
			before := startCgroupChild(t, cfg.SocketPath)
			if got := before.fetch(t); got != "ERR PermissionDenied" {
				t.Fatalf("before the move: %q, want ERR PermissionDenied", got)
			}
			// Inside: the entry matches.
			c := startCgroupChild(t, cfg.SocketPath)
			moveInto(t, tt.hier, tt.path, c.cmd.Process.Pid)
			if got := c.fetch(t); got != "ID spiffe://example.org/workload" {
				cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", c.cmd.Process.Pid))
				t.Fatalf("in %s: %q\n/proc/PID/cgroup:\n%s", tt.path, got, cg)
			}
			_ = c.stdin.Close()
			waitExit(t, c.cmd)
		})
	}
}

func waitExit(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("child did not exit")
	}
}
