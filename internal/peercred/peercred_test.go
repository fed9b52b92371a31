//go:build linux

package peercred

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
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
)

const (
	childEnv  = "PEERCRED_TEST_CHILD"
	socketEnv = "PEERCRED_TEST_SOCKET"
	execEnv   = "PEERCRED_TEST_EXEC"
)

// TestMain doubles as the child process: with childEnv=connect it connects
// to the socket in socketEnv, says "connected" and waits for stdin to close.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "connect" {
		c, err := net.Dial("unix", os.Getenv(socketEnv))
		if err != nil {
			fmt.Println("dial:", err)
			os.Exit(1)
		}
		fmt.Println("connected")
		if os.Getenv(execEnv) != "" {
			// One line on stdin: exec the binary named by execEnv.
			_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
			err = syscall.Exec(os.Getenv(execEnv), []string{"exec-target", "60"}, nil)
			fmt.Println("exec:", err)
			os.Exit(1)
		}
		_, _ = io.Copy(io.Discard, os.Stdin)
		_ = c.Close()
		return
	}
	goleak.VerifyTestMain(m)
}

// sockDir returns a fresh 0755 directory that other uids can traverse
// (t.TempDir's parent may be 0700).
func sockDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "peercred-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

func listen(t *testing.T) *net.UnixListener {
	t.Helper()
	l, err := Listen(filepath.Join(sockDir(t), "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func accept(t *testing.T, l *net.UnixListener) *net.UnixConn {
	t.Helper()
	c, err := l.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func get(t *testing.T, c *net.UnixConn) *Info {
	t.Helper()
	info, err := Get(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = info.Close() })
	return info
}

// socketPair returns both ends of a connected AF_UNIX stream socket pair.
func socketPair(t testing.TB) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]*net.UnixConn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), fmt.Sprintf("pair%d", i))
		c, err := net.FileConn(f)
		_ = f.Close() // FileConn dups the descriptor
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		conns[i] = c.(*net.UnixConn)
	}
	return conns[0], conns[1]
}

func TestGetSelf(t *testing.T) {
	tests := []struct {
		name string
		conn func(t *testing.T) *net.UnixConn
	}{
		{"socketpair", func(t *testing.T) *net.UnixConn { c, _ := socketPair(t); return c }},
		{"listener", func(t *testing.T) *net.UnixConn {
			l := listen(t)
			c, err := net.Dial("unix", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Close() })
			return accept(t, l)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info, err := Get(tt.conn(t))
			if err != nil {
				t.Fatal(err)
			}
			if int(info.PID) != os.Getpid() || int(info.UID) != os.Geteuid() || int(info.GID) != os.Getegid() {
				t.Fatalf("info = pid %d uid %d gid %d, want %d %d %d",
					info.PID, info.UID, info.GID, os.Getpid(), os.Geteuid(), os.Getegid())
			}
			want := SourcePidfdOpen
			if peerPIDFDSupported() {
				want = SourcePeerPIDFD
			}
			if got := info.PIDFDSource(); got != want {
				t.Errorf("PIDFDSource = %q, want %q", got, want)
			}
			if err := info.CheckAlive(); err != nil {
				t.Fatalf("CheckAlive on ourselves: %v", err)
			}
			if err := info.CheckExec(); err != nil {
				t.Fatalf("CheckExec on ourselves: %v", err)
			}
			groups, err := os.Getgroups()
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(groups)
			groups = slices.Compact(groups)
			if !info.GroupsKnown || len(info.Groups) != len(groups) {
				t.Fatalf("Groups = %v (known %v), want %v", info.Groups, info.GroupsKnown, groups)
			}
			for i, g := range groups {
				if info.Groups[i] != uint32(g) {
					t.Fatalf("Groups = %v, want %v", info.Groups, groups)
				}
			}
			if err := info.Close(); err != nil {
				t.Fatal(err)
			}
			if err := info.Close(); err != nil {
				t.Fatal("second Close:", err)
			}
			if err := info.CheckAlive(); !errors.Is(err, ErrProcessGone) {
				t.Fatalf("CheckAlive after Close = %v, want ErrProcessGone", err)
			}
		})
	}
}

func TestKernelHasPeerPIDFD(t *testing.T) {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		t.Fatal(err)
	}
	var major, minor int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(uts.Release[:]), "%d.%d", &major, &minor); err != nil {
		t.Fatal(err)
	}
	if want := major > 6 || major == 6 && minor >= 5; peerPIDFDSupported() != want {
		t.Fatalf("kernel %d.%d: SO_PEERPIDFD supported = %v, want %v", major, minor, !want, want)
	}
}

func TestClassifyPeerPIDFD(t *testing.T) {
	other := errors.New("boom")
	tests := []struct {
		name         string
		err          error
		supported    bool
		wantFallback bool
		wantErr      error
	}{
		{"ok", nil, true, false, nil},
		{"old kernel", unix.ENOPROTOOPT, false, true, nil},
		{"EINVAL, support unknown", unix.EINVAL, false, true, nil},
		{"EINVAL on a kernel with SO_PEERPIDFD: reaped", unix.EINVAL, true, false, ErrProcessGone},
		{"ESRCH: reaped", unix.ESRCH, true, false, ErrProcessGone},
		{"ESRCH without known support", unix.ESRCH, false, false, ErrProcessGone},
		{"other error", other, true, false, other},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fb, err := classifyPeerPIDFD(tt.err, tt.supported)
			if fb != tt.wantFallback {
				t.Errorf("fallback = %v, want %v", fb, tt.wantFallback)
			}
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

// child starts exe (a copy of the test binary) as a client that connects to
// sock and then waits for stdin to close. It returns once connected.
func child(t *testing.T, exe, sock string, cred *syscall.Credential) (*exec.Cmd, io.WriteCloser) {
	t.Helper()
	cmd := exec.Command(exe)
	// GORACE: a race-enabled child otherwise sleeps 1s at exit.
	cmd.Env = []string{childEnv + "=connect", socketEnv + "=" + sock, "GORACE=atexit_sleep_ms=0", execEnv + "=" + os.Getenv(execEnv)}
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = stdin.Close()
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "connected\n" {
		t.Fatalf("child said %q", line)
	}
	return cmd, stdin
}

func self(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// waitExit waits, without reaping, until process pid has exited.
func waitExit(t *testing.T, pid int) {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 10_000)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n == 0 {
			t.Fatalf("child %d did not exit: n=%d err=%v", pid, n, err)
		}
		return
	}
}

func procState(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	i := strings.LastIndexByte(string(b), ')')
	return strings.Fields(string(b[i+1:]))[0]
}

// A peer that execs another binary after connecting is no longer what the
// agent pinned at accept: CheckExec says so, even though it is alive and its
// ids are unchanged.
func TestCheckExecAfterPeerExecs(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary to exec")
	}
	t.Setenv(execEnv, sleep)
	l := listen(t)
	cmd, stdin := child(t, self(t), l.Addr().String(), nil)
	info := get(t, accept(t, l))
	if err := info.CheckExec(); err != nil {
		t.Fatalf("before exec: %v", err)
	}
	if _, err := io.WriteString(stdin, "exec\n"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", cmd.Process.Pid))
		if strings.TrimSpace(string(b)) == filepath.Base(sleep) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("child never exec'd (comm %q)", b)
		}
		time.Sleep(5 * time.Millisecond) // polling /proc with a deadline
	}
	if err := info.CheckAlive(); err != nil {
		t.Fatalf("exec'd child is alive: %v", err)
	}
	if err := info.CheckExec(); !errors.Is(err, ErrExecChanged) {
		t.Fatalf("CheckExec after exec = %v, want ErrExecChanged", err)
	}
	_ = cmd.Process.Kill()
}

func TestCheckAliveAfterChildExits(t *testing.T) {
	l := listen(t)
	cmd, stdin := child(t, self(t), l.Addr().String(), nil)
	info := get(t, accept(t, l))
	if int(info.PID) != cmd.Process.Pid {
		t.Fatalf("pid %d, want the child's %d", info.PID, cmd.Process.Pid)
	}
	if err := info.CheckAlive(); err != nil {
		t.Fatalf("running child: %v", err)
	}
	_ = stdin.Close()
	waitExit(t, cmd.Process.Pid)
	if s := procState(t, cmd.Process.Pid); s != "Z" {
		t.Fatalf("child state %q, want a zombie (Z)", s)
	}
	if err := info.CheckAlive(); !errors.Is(err, ErrProcessGone) {
		t.Fatalf("zombie child: %v, want ErrProcessGone", err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := info.CheckAlive(); !errors.Is(err, ErrProcessGone) {
		t.Fatalf("reaped child: %v, want ErrProcessGone", err)
	}
}

// A peer that connected and was reaped before accept must never be pinned
// by PID: that PID may belong to another process by now. Kernels 6.5 to 6.15
// refuse SO_PEERPIDFD for a reaped peer; later ones hand out a pidfd of the
// dead process. Either way the peer must come out as gone.
func TestGetAfterPeerReaped(t *testing.T) {
	l := listen(t)
	cmd, stdin := child(t, self(t), l.Addr().String(), nil)
	_ = stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	info, err := Get(accept(t, l))
	if err != nil {
		if !errors.Is(err, ErrProcessGone) {
			t.Fatalf("err = %v, want ErrProcessGone", err)
		}
		return
	}
	defer info.Close()
	if info.PIDFDSource() != SourcePeerPIDFD {
		t.Errorf("reaped peer pinned via %s, want %s", info.PIDFDSource(), SourcePeerPIDFD)
	}
	if err := info.CheckAlive(); !errors.Is(err, ErrProcessGone) {
		t.Fatalf("CheckAlive of a reaped peer = %v, want ErrProcessGone", err)
	}
}

func TestOtherUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start a child as uid 65534 (CI runs as root)")
	}
	dir := sockDir(t)
	// The test binary's own directory may be closed to other uids: copy it.
	data, err := os.ReadFile(self(t))
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "peercred.test")
	if err := os.WriteFile(exe, data, 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := Listen(filepath.Join(dir, "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cmd, _ := child(t, exe, l.Addr().String(), &syscall.Credential{Uid: 65534, Gid: 65534})
	info := get(t, accept(t, l))
	if info.UID != 65534 || info.GID != 65534 || int(info.PID) != cmd.Process.Pid {
		t.Fatalf("pid/uid/gid = %d/%d/%d, want %d/65534/65534", info.PID, info.UID, info.GID, cmd.Process.Pid)
	}
	if err := info.CheckAlive(); err != nil {
		t.Fatal(err)
	}
}

func TestServerHandshakeRejects(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, _, err := TransportCredentials().ServerHandshake(a); err == nil {
		t.Error("ServerHandshake accepted a non-Unix connection")
	}
	if _, _, err := TransportCredentials().ClientHandshake(context.Background(), "x", a); err == nil {
		t.Error("ClientHandshake succeeded")
	}
	if got := TransportCredentials().Info().SecurityProtocol; got != AuthType {
		t.Errorf("SecurityProtocol = %q", got)
	}
}

func TestFromContextWithoutPeercred(t *testing.T) {
	if _, ok := FromContext(context.Background()); ok {
		t.Error("FromContext on a bare context")
	}
	ctx := peer.NewContext(context.Background(), &peer.Peer{})
	if _, ok := FromContext(ctx); ok {
		t.Error("FromContext on a peer without peercred AuthInfo")
	}
}

type pidServer struct {
	healthpb.UnimplementedHealthServer
	info chan *Info
}

func (s *pidServer) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	info, _ := FromContext(ctx)
	s.info <- info
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func TestGRPCTransportCredentials(t *testing.T) {
	l := listen(t)
	srv := grpc.NewServer(grpc.Creds(TransportCredentials()))
	ps := &pidServer{info: make(chan *Info, 1)}
	healthpb.RegisterHealthServer(srv, ps)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			srv.Stop()
			<-served
		}
	}
	defer stop()
	cc, err := grpc.NewClient("unix://"+l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	info := <-ps.info
	if info == nil {
		t.Fatal("handler: FromContext found no peer credentials")
	}
	if int(info.PID) != os.Getpid() || int(info.UID) != os.Geteuid() {
		t.Fatalf("handler saw pid %d uid %d, want %d %d", info.PID, info.UID, os.Getpid(), os.Geteuid())
	}
	if err := info.CheckAlive(); err != nil {
		t.Fatalf("CheckAlive during the call: %v", err)
	}
	// Closing the server's connections must close their pidfds: we are
	// alive, so only a closed pidfd makes CheckAlive report ErrProcessGone.
	stop()
	if err := info.CheckAlive(); !errors.Is(err, ErrProcessGone) {
		t.Fatalf("CheckAlive after the connection closed = %v, want ErrProcessGone (pidfd closed)", err)
	}
}

// BenchmarkCheckExec is the per-RPC cost of the exec pin (the agent calls
// it twice per attestation).
func BenchmarkCheckExec(b *testing.B) {
	c, _ := socketPair(b)
	info, err := Get(c)
	if err != nil {
		b.Fatal(err)
	}
	defer info.Close()
	for b.Loop() {
		if err := info.CheckExec(); err != nil {
			b.Fatal(err)
		}
	}
}
