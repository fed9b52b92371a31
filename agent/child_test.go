package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/nodeward/nodeward/attestors/selector"
	"github.com/nodeward/nodeward/internal/peercred"
	"github.com/nodeward/nodeward/test/swtpm"
)

// Child-process modes of the test binary, chosen by NODEWARD_TEST_CHILD.
const childEnv = "NODEWARD_TEST_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "fetch":
		childFetch()
		return
	case "fetch-on-cue":
		childFetchOnCue()
		return
	case "connect-and-wait":
		childConnectAndWait()
		return
	case "connect-then-setuid":
		childConnectThenSetuid()
		return
	}
	code := m.Run()
	swtpm.Cleanup()
	if code == 0 {
		if err := transcript.sweep(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	if code == 0 {
		// Every agent, stream and client a test starts must be gone when it ends.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// childFetch fetches an X.509-SVID and prints "ID <spiffe id>" or "ERR <grpc code>".
func childFetch() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	xc, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+os.Getenv("NODEWARD_TEST_SOCKET")))
	if err != nil {
		fmt.Printf("ERR %s\n", status.Code(err))
		return
	}
	fmt.Printf("ID %s\n", xc.SVIDs[0].ID)
}

// childConnectAndWait connects to the socket and blocks until stdin closes.
func childConnectAndWait() {
	c, err := net.Dial("unix", os.Getenv("NODEWARD_TEST_SOCKET"))
	if err != nil {
		fmt.Println("dial:", err)
		os.Exit(1)
	}
	defer c.Close()
	fmt.Println("connected")
	_, _ = io.Copy(io.Discard, os.Stdin)
}

// childConnectThenSetuid connects as root, drops to uid/gid 65534 and only
// then asks for an X.509-SVID over the connection it opened as root: what a
// process does when it hands its connection on and execs something else.
func childConnectThenSetuid() {
	c, err := net.Dial("unix", os.Getenv("NODEWARD_TEST_SOCKET"))
	if err != nil {
		fmt.Println("dial:", err)
		os.Exit(1)
	}
	if err := syscall.Setgid(65534); err != nil {
		fmt.Println("setgid:", err)
		os.Exit(1)
	}
	if err := syscall.Setuid(65534); err != nil {
		fmt.Println("setuid:", err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dial := grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return c, nil })
	xc, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix:///connected"),
		workloadapi.WithDialOptions(dial))
	if err != nil {
		fmt.Printf("ERR %s\n", status.Code(err))
		return
	}
	fmt.Printf("ID %s\n", xc.SVIDs[0].ID)
}

// exeForOthers copies the test binary where another uid can execute it.
func exeForOthers(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(socketDir(t), "agent.test")
	if err := os.WriteFile(p, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func runAsNobody(t *testing.T, exe, sock string) string {
	t.Helper()
	cmd := exec.Command(exe)
	cmd.Env = []string{childEnv + "=fetch", "NODEWARD_TEST_SOCKET=" + sock}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestOtherUIDDeniedThenRegistered(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a child under uid 65534 (CI runs as root)")
	}
	exe := exeForOthers(t)
	cfg := testConfig(t, "entries:\n"+selfEntry("me", ""))
	r := startAgent(t, cfg)
	if got := runAsNobody(t, exe, cfg.SocketPath); got != "ERR PermissionDenied" {
		t.Fatalf("unregistered uid 65534 got %q, want ERR PermissionDenied", got)
	}
	next := *cfg
	next.Entries = testConfig(t, "entries:\n"+selfEntry("me", "")+
		fmt.Sprintf("  - spiffe_id: spiffe://%s/nobody\n    selectors: [unix:uid:65534, unix:user:nobody]\n", td)).Entries
	if err := r.agent.Reload(&next); err != nil {
		t.Fatal(err)
	}
	if got := runAsNobody(t, exe, cfg.SocketPath); got != "ID spiffe://example.org/nobody" {
		t.Fatalf("registered uid 65534 got %q", got)
	}
}

func TestPeerWhoseUIDChangedAfterConnectIsDenied(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to connect as root and drop to uid 65534 (CI runs as root)")
	}
	cfg := testConfig(t, "entries:\n"+
		fmt.Sprintf("  - spiffe_id: spiffe://%s/nobody\n    selectors: [unix:uid:65534, unix:user:nobody]\n", td))
	startAgent(t, cfg)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = []string{childEnv + "=connect-then-setuid", "NODEWARD_TEST_SOCKET=" + cfg.SocketPath}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	// /proc now says uid 65534, which has an entry; but the connection was
	// opened by uid 0, so nothing may be issued on it.
	if got := strings.TrimSpace(string(out)); got != "ERR PermissionDenied" {
		t.Fatalf("connection opened as uid 0, used as uid 65534: got %q, want ERR PermissionDenied", got)
	}
}

func TestCheckPeerIDs(t *testing.T) {
	sels := []selector.Selector{selector.New("unix", "uid", "1000"), selector.New("unix", "gid", "0"),
		selector.New("unix", "supplementary-gid", "10"), selector.New("unix", "supplementary-gid", "20")}
	connected := func(uid, gid uint32, groups ...uint32) *peercred.Info {
		return &peercred.Info{UID: uid, GID: gid, Groups: groups, GroupsKnown: true}
	}
	for _, tc := range []struct {
		name string
		p    *peercred.Info
		want error
	}{
		{"same ids", connected(1000, 0, 10, 20), nil},
		{"groups unknown", &peercred.Info{UID: 1000, GID: 0}, nil},
		{"uid changed", connected(0, 0, 10, 20), ErrUIDChanged},
		{"setgid exec", connected(1000, 5, 10, 20), ErrGIDChanged},
		{"group gained", connected(1000, 0, 10), ErrGIDChanged},
		{"group lost", connected(1000, 0, 10, 20, 30), ErrGIDChanged},
		{"group swapped", connected(1000, 0, 10, 30), ErrGIDChanged},
	} {
		if err := checkPeerIDs(sels, tc.p); !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
}

// reapingAttestor stands for an attestor that is slow: while it "reads
// /proc", the caller exits and is reaped, so its PID is free for reuse.
type reapingAttestor struct{ cmd *exec.Cmd }

func (reapingAttestor) Name() string { return "reaping-test-attestor" }

func (r reapingAttestor) Attest(context.Context, int32) ([]selector.Selector, error) {
	if r.cmd != nil {
		_ = r.cmd.Process.Kill()
		_ = r.cmd.Wait()
	}
	return []selector.Selector{selector.New("unix", "uid", "0")}, nil
}

func TestAttestFailsClosedWhenCallerExitsMidAttestation(t *testing.T) {
	for _, exits := range []bool{false, true} {
		t.Run(fmt.Sprintf("exits=%v", exits), func(t *testing.T) {
			sock := filepath.Join(socketDir(t), "s.sock")
			l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			self, _ := os.Executable()
			cmd := exec.Command(self)
			cmd.Env = []string{childEnv + "=connect-and-wait", "NODEWARD_TEST_SOCKET=" + sock}
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
			t.Cleanup(func() { _ = stdin.Close(); _ = cmd.Process.Kill(); _ = cmd.Wait() })
			if line, _ := bufio.NewReader(stdout).ReadString('\n'); line != "connected\n" {
				t.Fatalf("child said %q", line)
			}
			conn, err := l.AcceptUnix()
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			info, err := peercred.Get(conn)
			if err != nil {
				t.Fatal(err)
			}
			defer info.Close()
			if int(info.PID) != cmd.Process.Pid {
				t.Fatalf("peer pid %d, child %d", info.PID, cmd.Process.Pid)
			}
			at := reapingAttestor{}
			if exits {
				at.cmd = cmd
			}
			b := backend{a: &Agent{attestors: []WorkloadAttestor{at}}}
			sels, err := b.Attest(context.Background(), info)
			if exits {
				if !errors.Is(err, peercred.ErrProcessGone) || sels != nil {
					t.Fatalf("caller exited mid-attestation: sels=%v err=%v, want ErrProcessGone", sels, err)
				}
				return
			}
			if err != nil || len(sels) != 1 {
				t.Fatalf("live caller: sels=%v err=%v", sels, err)
			}
		})
	}
}
