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
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

const childEnv = "PEERCRED_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "connect" {
		c, err := net.Dial("unix", os.Getenv("PEERCRED_TEST_SOCKET"))
		if err != nil {
			fmt.Println("dial:", err)
			os.Exit(1)
		}
		fmt.Println("connected")
		_, _ = io.Copy(io.Discard, os.Stdin)
		_ = c.Close()
		return
	}
	goleak.VerifyTestMain(m)
}

// sockDir returns a 0755 directory reachable by other uids.
func sockDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "peercred-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

func TestGetSelf(t *testing.T) {
	l, err := Listen(filepath.Join(sockDir(t), "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := l.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	info, err := Get(sc)
	if err != nil {
		t.Fatal(err)
	}
	defer info.Close()
	if int(info.PID) != os.Getpid() || int(info.UID) != os.Geteuid() || int(info.GID) != os.Getegid() {
		t.Fatalf("info = %+v", info)
	}
	if info.PIDFDSource() != "SO_PEERPIDFD" && info.PIDFDSource() != "pidfd_open" {
		t.Fatalf("source %q", info.PIDFDSource())
	}
	if err := info.CheckAlive(); err != nil {
		t.Fatal(err)
	}
	_ = info.Close()
	if err := info.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	if err := info.CheckAlive(); !errors.Is(err, ErrProcessGone) {
		t.Fatalf("CheckAlive after Close = %v", err)
	}
}

// child starts the test binary as a client that connects and then waits for
// stdin to close.
func child(t *testing.T, exe, sock string, cred *syscall.Credential) (*exec.Cmd, io.WriteCloser) {
	t.Helper()
	cmd := exec.Command(exe)
	cmd.Env = []string{childEnv + "=connect", "PEERCRED_TEST_SOCKET=" + sock}
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
	t.Cleanup(func() { _ = stdin.Close(); _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "connected\n" {
		t.Fatalf("child said %q", line)
	}
	return cmd, stdin
}

func TestCheckAliveAfterChildExits(t *testing.T) {
	l, err := Listen(filepath.Join(sockDir(t), "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	exe, _ := os.Executable()
	cmd, stdin := child(t, exe, l.Addr().String(), nil)
	sc, err := l.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	info, err := Get(sc)
	if err != nil {
		t.Fatal(err)
	}
	defer info.Close()
	if int(info.PID) != cmd.Process.Pid {
		t.Fatalf("pid %d, want %d", info.PID, cmd.Process.Pid)
	}
	if err := info.CheckAlive(); err != nil {
		t.Fatalf("running child: %v", err)
	}
	_ = stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := info.CheckAlive(); !errors.Is(err, ErrProcessGone) {
		t.Fatalf("exited child: %v, want ErrProcessGone", err)
	}
}

func TestOtherUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start a child as uid 65534 (CI runs as root)")
	}
	dir := sockDir(t)
	self, _ := os.Executable()
	data, err := os.ReadFile(self)
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
	child(t, exe, l.Addr().String(), &syscall.Credential{Uid: 65534, Gid: 65534})
	sc, err := l.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	info, err := Get(sc)
	if err != nil {
		t.Fatal(err)
	}
	defer info.Close()
	if info.UID != 65534 || info.GID != 65534 {
		t.Fatalf("uid/gid = %d/%d", info.UID, info.GID)
	}
}

func TestListen(t *testing.T) {
	dir := sockDir(t)
	p := filepath.Join(dir, "s.sock")
	l, err := Listen(p)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o777 {
		t.Errorf("socket mode %v", st.Mode().Perm())
	}
	if _, err := Listen(p); !errors.Is(err, ErrSocketInUse) {
		t.Fatalf("live socket: %v", err)
	}
	// A crashed agent leaves its socket file behind.
	l.SetUnlinkOnClose(false)
	_ = l.Close()
	if _, err := os.Stat(p); err != nil {
		t.Fatal("stale socket not left behind:", err)
	}
	l2, err := Listen(p)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	_ = l2.Close()

	reg := filepath.Join(dir, "file")
	if err := os.WriteFile(reg, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(reg); err == nil {
		t.Error("regular file replaced")
	}
	open := filepath.Join(dir, "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(open, 0o777)
	if _, err := Listen(filepath.Join(open, "s.sock")); !errors.Is(err, ErrUnsafeDir) {
		t.Errorf("group-writable dir: %v", err)
	}
	created := filepath.Join(dir, "new", "sub", "s.sock")
	l3, err := Listen(created)
	if err != nil {
		t.Fatal(err)
	}
	_ = l3.Close()
	st, _ = os.Stat(filepath.Dir(created))
	if st.Mode().Perm() != 0o755 {
		t.Errorf("created dir mode %v", st.Mode().Perm())
	}
	if _, err := Listen("relative.sock"); err == nil {
		t.Error("relative path accepted")
	}
}

type pidServer struct {
	healthpb.UnimplementedHealthServer
	pid chan int32
}

func (s *pidServer) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	info, ok := FromContext(ctx)
	if !ok {
		s.pid <- -1
	} else {
		s.pid <- info.PID
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func TestGRPCTransportCredentials(t *testing.T) {
	l, err := Listen(filepath.Join(sockDir(t), "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(TransportCredentials()))
	ps := &pidServer{pid: make(chan int32, 1)}
	healthpb.RegisterHealthServer(srv, ps)
	go func() { _ = srv.Serve(l) }()
	defer srv.Stop()
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
	if got := <-ps.pid; int(got) != os.Getpid() {
		t.Fatalf("handler saw pid %d, want %d", got, os.Getpid())
	}
	if _, ok := FromContext(context.Background()); ok {
		t.Error("FromContext on a bare context")
	}
}
