package e2e

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nodeward/nodeward/test/testutil"
)

// notifySocket is the test's stand-in for systemd's end of NOTIFY_SOCKET: a
// real unixgram socket that collects what the daemon sends.
type notifySocket struct {
	path string
	conn *net.UnixConn
	mu   sync.Mutex
	msgs []string
}

func listenNotify(t *testing.T, dir string) *notifySocket {
	t.Helper()
	n := &notifySocket{path: filepath.Join(dir, "notify.sock")}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n.conn = c
	t.Cleanup(func() { _ = c.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, string(buf[:k]))
			n.mu.Unlock()
		}
	}()
	return n
}

// waitFor polls until a message after index from contains want; it returns
// the index after that message.
func (n *notifySocket) waitFor(t *testing.T, from int, want string, within time.Duration) (int, string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		n.mu.Lock()
		for i := from; i < len(n.msgs); i++ {
			if strings.Contains(n.msgs[i], want) {
				m := n.msgs[i]
				n.mu.Unlock()
				return i + 1, m
			}
		}
		all := strings.Join(n.msgs, " | ")
		n.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no %q from the daemon within %s; got: %s", want, within, all)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startActivated starts `bin args...` the way systemd does for a
// socket-activated Type=notify service: the listening socket as fd 3 with
// LISTEN_FDS/LISTEN_FDNAMES/LISTEN_PID (the shell exec keeps its pid, so
// LISTEN_PID=$$ is the daemon's), NOTIFY_SOCKET and WATCHDOG_USEC.
func startActivated(t *testing.T, bin string, l *net.UnixListener, fdName, notify string, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	return startActivatedMany(t, bin, []*net.UnixListener{l}, []string{fdName}, notify, args...)
}

// startActivatedMany passes several listening sockets (fd 3, 4, …) named
// by LISTEN_FDNAMES, as a service with several socket units gets them.
func startActivatedMany(t *testing.T, bin string, ls []*net.UnixListener, names []string, notify string, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	var files []*os.File
	for _, l := range ls {
		f, err := l.File()
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files = append(files, f)
	}
	cmd := exec.Command("/bin/sh", append([]string{"-c", `LISTEN_PID=$$ exec "$0" "$@"`, bin}, args...)...)
	cmd.Env = append(os.Environ(), fmt.Sprintf("LISTEN_FDS=%d", len(ls)), "LISTEN_FDNAMES="+strings.Join(names, ":"),
		"NOTIFY_SOCKET="+notify, "WATCHDOG_USEC=300000")
	cmd.ExtraFiles = files
	var log bytes.Buffer
	var mu sync.Mutex
	w := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return log.Write(p) })
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		if t.Failed() {
			mu.Lock()
			t.Logf("daemon log:\n%s", log.String())
			mu.Unlock()
		}
	})
	return cmd, &log
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestSystemdSocketActivationAndNotify: the agent serves go-spiffe clients
// on the socket systemd passed (never creating its configured one), says
// READY=1 with a STATUS= line once it serves, pings the watchdog, brackets a
// SIGHUP reload with RELOADING=1 / READY=1, and says STOPPING=1 on SIGTERM
// without unlinking the socket systemd owns.
func TestSystemdSocketActivationAndNotify(t *testing.T) {
	dir := testutil.SocketDir(t)
	entry := fmt.Sprintf("entries:\n  - spiffe_id: spiffe://example.org/cli\n    selectors: [unix:uid:%d, \"unix:path:%s\"]\n", os.Geteuid(), bin)
	cfg, configured := testutil.WriteConfig(t, dir, "example.org", entry)
	activated := filepath.Join(dir, "activated.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: activated, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(activated, 0o777); err != nil {
		t.Fatal(err)
	}
	n := listenNotify(t, dir)
	cmd, _ := startActivated(t, bin, l, "workload", n.path, "agent", "--config", cfg)
	_ = l.Close() // the daemon holds its own copy, as with systemd

	next, ready := n.waitFor(t, 0, "READY=1", 10*time.Second)
	if !strings.Contains(ready, "STATUS=serving 1 entries") {
		t.Fatalf("READY=1 without the status line: %q", ready)
	}
	out, errOut, code := testutil.Run(t, bin, nil, "fetch", "x509", "--socket", activated)
	if code != 0 || !strings.Contains(out, "spiffe://example.org/cli") {
		t.Fatalf("fetch over the activated socket: %d %s %s", code, out, errOut)
	}
	if _, err := os.Stat(configured); err == nil {
		t.Fatal("the agent created its configured socket although systemd passed one")
	}
	next, ping := n.waitFor(t, next, "WATCHDOG=1", 5*time.Second)
	if !strings.Contains(ping, "X.509 identities") {
		t.Fatalf("watchdog ping without the status refresh: %q", ping)
	}

	// A broken config on SIGHUP: RELOADING=1, READY=1, the old one serves on.
	testutil.WriteConfig(t, dir, "example.org", "bogus_key: 1\n")
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	next, reloading := n.waitFor(t, next, "RELOADING=1", 5*time.Second)
	if !strings.Contains(reloading, "MONOTONIC_USEC=") {
		t.Fatalf("RELOADING=1 without MONOTONIC_USEC: %q", reloading)
	}
	next, _ = n.waitFor(t, next, "READY=1", 5*time.Second)
	if _, _, code := testutil.Run(t, bin, nil, "fetch", "x509", "--socket", activated); code != 0 {
		t.Fatal("a broken config on reload stopped the old one from serving")
	}
	// Then a config that revokes the entry: after READY=1 the identity is gone.
	testutil.WriteConfig(t, dir, "example.org", "")
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	next, _ = n.waitFor(t, next, "RELOADING=1", 5*time.Second)
	next, ready = n.waitFor(t, next, "READY=1", 5*time.Second)
	if !strings.Contains(ready, "STATUS=serving 0 entries") {
		t.Fatalf("READY=1 after reload: %q", ready)
	}
	if _, _, code := testutil.Run(t, bin, nil, "fetch", "x509", "--socket", activated); code == 0 {
		t.Fatal("revoked identity still served after the reload")
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	n.waitFor(t, next, "STOPPING=1", 5*time.Second)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("agent exit: %v", err)
	}
	if _, err := os.Stat(activated); err != nil {
		t.Fatalf("the agent removed the socket systemd owns: %v", err)
	}
}

// TestAgentIgnoresActivationMeantForAnotherPID: LISTEN_* variables
// inherited from a parent that was socket-activated (LISTEN_PID is not ours)
// are ignored and the agent listens on its configured path, as it does
// without systemd in every other e2e test.
func TestAgentIgnoresActivationMeantForAnotherPID(t *testing.T) {
	t.Setenv("NODEWARD_AGENT_ENV", "LISTEN_PID=1 LISTEN_FDS=1 LISTEN_FDNAMES=workload")
	dir := testutil.SocketDir(t)
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", "")
	testutil.StartProcess(t, bin, sock, "agent", "--config", cfg)
	testutil.WaitServing(t, sock, 10*time.Second)
}

// TestBrokerSocketActivation: the broker serves its HTTP API on the socket
// systemd passed (FileDescriptorName=broker) and says READY=1 / STOPPING=1.
func TestBrokerSocketActivation(t *testing.T) {
	dir := testutil.SocketDir(t)
	bcfg := filepath.Join(dir, "broker.yaml")
	configured := filepath.Join(dir, "configured-broker.sock")
	err := os.WriteFile(bcfg, []byte(fmt.Sprintf(`workload_socket: unix://%s/no-agent.sock
listen: %s
upstreams:
  - name: corp
    token_endpoint: http://127.0.0.1:1/token
    grant: jwt-bearer
`, dir, configured)), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	activated := filepath.Join(dir, "activated-broker.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: activated, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	n := listenNotify(t, dir)
	cmd, _ := startActivated(t, bin, l, "broker", n.path, "broker", "--config", bcfg)
	_ = l.Close()
	next, ready := n.waitFor(t, 0, "READY=1", 10*time.Second)
	if !strings.Contains(ready, "STATUS=serving 0 cached tokens, 1 upstreams") {
		t.Fatalf("broker READY=1: %q", ready)
	}
	// The API answers on the activated socket (a request without the
	// Nodeward-Request header is refused with 400, as always).
	if got := brokerStatusLine(t, activated); !strings.HasPrefix(got, "HTTP/1.1 400") {
		t.Fatalf("broker on the activated socket answered %q", got)
	}
	if _, err := os.Stat(configured); err == nil {
		t.Fatal("the broker created its configured socket although systemd passed one")
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	n.waitFor(t, next, "STOPPING=1", 5*time.Second)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("broker exit: %v", err)
	}
}

// TestAgentWithEmbeddedBrokerTakesBothSockets: an agent with a broker
// section, started with two sockets (workload and broker), serves each on
// its own and says READY=1 only when both serve.
func TestAgentWithEmbeddedBrokerTakesBothSockets(t *testing.T) {
	dir := testutil.SocketDir(t)
	extra := fmt.Sprintf(`entries:
  - spiffe_id: spiffe://example.org/node-broker
    selectors: [unix:uid:%d, "unix:path:%s"]
broker:
  listen: %s/configured-broker.sock
  upstreams:
    - name: corp
      token_endpoint: http://127.0.0.1:1/token
      grant: jwt-bearer
`, os.Geteuid(), bin, dir)
	cfg, configured := testutil.WriteConfig(t, dir, "example.org", extra)
	var ls []*net.UnixListener
	for _, name := range []string{"workload", "broker"} {
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "activated-"+name+".sock"), Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		l.SetUnlinkOnClose(false)
		ls = append(ls, l)
	}
	n := listenNotify(t, dir)
	cmd, _ := startActivatedMany(t, bin, ls, []string{"workload", "broker"}, n.path, "agent", "--config", cfg)
	for _, l := range ls {
		_ = l.Close()
	}
	next, _ := n.waitFor(t, 0, "READY=1", 10*time.Second)
	if out, errOut, code := testutil.Run(t, bin, nil, "fetch", "x509", "--socket", filepath.Join(dir, "activated-workload.sock")); code != 0 || !strings.Contains(out, "node-broker") {
		t.Fatalf("workload socket: %d %s %s", code, out, errOut)
	}
	if got := brokerStatusLine(t, filepath.Join(dir, "activated-broker.sock")); !strings.HasPrefix(got, "HTTP/1.1 400") {
		t.Fatalf("broker on its activated socket answered %q", got)
	}
	for _, p := range []string{configured, filepath.Join(dir, "configured-broker.sock")} {
		if _, err := os.Stat(p); err == nil {
			t.Fatalf("%s created although systemd passed a socket", p)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	n.waitFor(t, next, "STOPPING=1", 5*time.Second)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("agent exit: %v", err)
	}
}

// brokerStatusLine sends a token request without the Nodeward-Request
// header over the Unix socket and returns the start of the answer (a
// serving broker refuses it with 400).
func brokerStatusLine(t *testing.T, sock string) string {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("GET /v1/token?upstream=corp HTTP/1.1\r\nHost: broker\r\nConnection: close\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	k, _ := c.Read(buf)
	return string(buf[:k])
}
