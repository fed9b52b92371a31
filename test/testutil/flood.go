package testutil

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// FloodEnv makes a test binary a flooding Workload API caller (issue 11
// item 3): "mode,socket,n". See FloodChild.
const FloodEnv = "NODEWARD_TEST_FLOOD"

// FloodChild runs the flooding caller and exits when FloodEnv is set; call
// it from the test package's init. Modes:
//
//	idle n     open n connections that send the HTTP/2 preface and never
//	           call; print "READY n"; hold them until stdin closes.
//	jwt n      n FetchJWTSVID calls, each with 32 distinct 1 KiB audiences,
//	           from 4 goroutines; print "DONE ok exhausted". With n = 0:
//	           print "READY" and call until stdin closes.
//	jwt-small n  as jwt, with one short audience per call.
//	streams n  open n FetchX509SVID streams on one connection; print
//	           "READY k" once 64 answered; hold them until stdin closes.
func FloodChild() {
	v := os.Getenv(FloodEnv)
	if v == "" {
		return
	}
	parts := strings.SplitN(v, ",", 3)
	if len(parts) != 3 {
		fmt.Fprintln(os.Stderr, "flood: want mode,socket,n")
		os.Exit(2)
	}
	n, err := strconv.Atoi(parts[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	switch parts[0] {
	case "idle":
		err = floodIdle(parts[1], n)
	case "jwt":
		err = floodJWT(parts[1], n, 32, 1012)
	case "jwt-small":
		err = floodJWT(parts[1], n, 1, 0)
	case "streams":
		err = floodStreams(parts[1], n)
	default:
		err = fmt.Errorf("unknown mode %q", parts[0])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "flood:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// h2Preface is what a gRPC client sends first: the HTTP/2 preface and an
// empty SETTINGS frame.
var h2Preface = append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0, 0, 4, 0, 0, 0, 0, 0)

func floodIdle(sock string, n int) error {
	conns := make([]net.Conn, 0, n)
	for range n {
		c, err := net.Dial("unix", sock)
		if err != nil {
			return fmt.Errorf("after %d connections: %w", len(conns), err)
		}
		_, _ = c.Write(h2Preface) // a refused connection may be closed already
		conns = append(conns, c)
	}
	fmt.Println("READY", len(conns))
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		_ = c.Close()
	}
	return nil
}

// RawClient returns a plain gRPC connection to the Workload API socket and
// a context carrying the security header.
func RawClient(sock string) (*grpc.ClientConn, context.Context, error) {
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("grpc client: %w", err)
	}
	return cc, metadata.AppendToOutgoingContext(context.Background(), "workload.spiffe.io", "true"), nil
}

func floodJWT(sock string, n, auds, pad int) error {
	cc, ctx, err := RawClient(sock)
	if err != nil {
		return err
	}
	defer cc.Close()
	c := workload.NewSpiffeWorkloadAPIClient(cc)
	var stop atomic.Bool
	if n <= 0 {
		fmt.Println("READY")
		go func() { _, _ = io.Copy(io.Discard, os.Stdin); stop.Store(true) }()
	}
	var next, ok, exhausted atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			for i := next.Add(1); (n <= 0 && !stop.Load()) || (n > 0 && i <= int64(n)); i = next.Add(1) {
				aud := make([]string, auds)
				for j := range aud {
					aud[j] = fmt.Sprintf("%08d-%02d-%s", i, j, strings.Repeat("a", pad))
				}
				_, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: aud})
				switch status.Code(err) {
				case codes.OK:
					ok.Add(1)
				case codes.ResourceExhausted:
					exhausted.Add(1)
				default:
					errc <- err
					return
				}
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
	}
	if n > 0 {
		fmt.Println("DONE", ok.Load(), exhausted.Load())
	}
	return nil
}

func floodStreams(sock string, n int) error {
	cc, ctx, err := RawClient(sock)
	if err != nil {
		return err
	}
	defer cc.Close()
	c := workload.NewSpiffeWorkloadAPIClient(cc)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var got atomic.Int64
	ready := make(chan struct{})
	var once sync.Once
	for range n {
		go func() {
			s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
			if err != nil {
				return
			}
			if _, err := s.Recv(); err == nil && got.Add(1) >= 64 {
				once.Do(func() { close(ready) })
			}
			<-ctx.Done()
		}()
	}
	select {
	case <-ready:
	case <-time.After(60 * time.Second):
		return fmt.Errorf("only %d streams answered", got.Load())
	}
	fmt.Println("READY", got.Load())
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

// Flood is a running flooding child.
type Flood struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

// StartFlood runs this test binary (copied into dir, which uid must be able
// to reach) as uid:uid in the given FloodChild mode against sock, and
// returns once it printed its first line, which it returns. The child is
// stopped when the test ends (or by Stop).
func StartFlood(t testing.TB, dir, mode, sock string, n int, uid uint32) (*Flood, string) {
	t.Helper()
	exe := filepath.Join(dir, "flood")
	if _, err := os.Stat(exe); err != nil {
		self, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		copyFile(t, self, exe)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%s,%d", FloodEnv, mode, sock, n))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	var stderr LockedBuffer
	cmd.Stderr = &stderr
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
	f := &Flood{cmd: cmd, stdin: stdin}
	t.Cleanup(f.Stop)
	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		lines <- strings.TrimSpace(line)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case line := <-lines:
		if line == "" {
			f.Stop()
			t.Fatalf("flood %s ended without answer: %s", mode, stderr.String())
		}
		return f, line
	case <-time.After(120 * time.Second):
		t.Fatalf("flood %s gave no answer within 120s", mode)
	}
	return nil, ""
}

// PID returns the child's process id.
func (f *Flood) PID() int { return f.cmd.Process.Pid }

// Stop closes the child's stdin and waits for it (killing it after 10 s).
func (f *Flood) Stop() {
	_ = f.stdin.Close()
	done := make(chan struct{})
	go func() { _ = f.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = f.cmd.Process.Kill()
		<-done
	}
}

func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}
