// Package swtpm runs real software TPMs (swtpm) for tests: one
// provisioning per test binary (EK certificates from a private local CA),
// then one TPM per test on a copy of that state, reached over a socketpair
// (no ports, safe for t.Parallel), or over TCP for end-to-end tests of the
// built binary.
//
// Tests skip when swtpm is absent, unless the CI environment variable is
// set: then they fail, since CI installs swtpm.
package swtpm

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/nodeward/nodeward/attestors/tpm"
)

var (
	provisionOnce sync.Once
	provisioned   *Provisioned
	provisionErr  error
)

// Provisioned is a TPM state with EK certificates, made once.
type Provisioned struct {
	Dir      string // scratch directory holding everything below
	StateDir string // swtpm state (tpm2-00.permall)
	// RootsPEM is a PEM file with the local CA's root and intermediate: the
	// "manufacturer roots" of these TPMs.
	RootsPEM string
}

// Require skips (or, under CI, fails) the test when swtpm is missing.
func Require(t testing.TB) {
	t.Helper()
	for _, tool := range []string{"swtpm", "swtpm_setup", "swtpm_localca"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s not found, and CI is set (CI installs swtpm and swtpm-tools): %v", tool, err)
			}
			t.Skipf("%s not installed (apt-get install swtpm swtpm-tools)", tool)
		}
	}
}

// Provision provisions a TPM state once per test binary (about a second).
func Provision(t testing.TB) *Provisioned {
	t.Helper()
	Require(t)
	provisionOnce.Do(func() { provisioned, provisionErr = provision() })
	if provisionErr != nil {
		t.Fatalf("provision swtpm: %v", provisionErr)
	}
	return provisioned
}

// Cleanup removes the provisioned state; call it from TestMain after m.Run.
func Cleanup() {
	if provisioned != nil {
		_ = os.RemoveAll(provisioned.Dir)
	}
}

func provision() (*Provisioned, error) {
	dir, err := os.MkdirTemp("", "nodeward-swtpm-")
	if err != nil {
		return nil, err
	}
	p := &Provisioned{Dir: dir, StateDir: filepath.Join(dir, "state"), RootsPEM: filepath.Join(dir, "ek-roots.pem")}
	ca := filepath.Join(dir, "localca")
	certs := filepath.Join(dir, "certs")
	for _, d := range []string{p.StateDir, ca, certs} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	files := map[string]string{
		"setup.conf": fmt.Sprintf("create_certs_tool=/usr/bin/swtpm_localca\ncreate_certs_tool_config=%s\ncreate_certs_tool_options=%s\nactive_pcr_banks=sha256\n",
			filepath.Join(dir, "localca.conf"), filepath.Join(dir, "localca.options")),
		"localca.conf": fmt.Sprintf("statedir = %s\nsigningkey = %s\nissuercert = %s\ncertserial = %s\n",
			ca, filepath.Join(ca, "signkey.pem"), filepath.Join(ca, "issuercert.pem"), filepath.Join(ca, "certserial")),
		"localca.options": "--platform-manufacturer nodeward\n--platform-version 2.1\n--platform-model swtpm\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			return nil, err
		}
	}
	out, err := exec.Command("swtpm_setup", "--tpm2", "--tpmstate", p.StateDir, "--config", filepath.Join(dir, "setup.conf"),
		"--createek", "--ecc", "--create-ek-cert", "--create-platform-cert", "--pcr-banks", "sha256",
		"--write-ek-cert-files", certs, "--overwrite").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("swtpm_setup: %v\n%s", err, out)
	}
	// The local CA's root (self-signed) and its issuer certificate.
	var roots []byte
	for _, name := range []string{"swtpm-localca-rootca-cert.pem", "issuercert.pem"} {
		b, err := os.ReadFile(filepath.Join(ca, name))
		if err != nil {
			return nil, fmt.Errorf("local CA: %w", err)
		}
		roots = append(roots, b...)
	}
	if err := os.WriteFile(p.RootsPEM, roots, 0o644); err != nil {
		return nil, err
	}
	return p, nil
}

// Sim is one running swtpm.
type Sim struct {
	StateDir string
	RootsPEM string
	cmd      *exec.Cmd
}

// Roots loads the EK roots (pool and intermediates).
func (s *Sim) Roots(t testing.TB) (*x509.CertPool, []*x509.Certificate) {
	t.Helper()
	pool, inter, err := tpm.LoadRoots(s.RootsPEM)
	if err != nil {
		t.Fatal(err)
	}
	return pool, inter
}

// Start runs a fresh swtpm (a copy of the provisioned state) and returns
// it with an open *tpm.TPM over a socketpair; both end with the test.
func Start(t testing.TB) (*Sim, *tpm.TPM) {
	t.Helper()
	p := Provision(t)
	dir := t.TempDir()
	if err := copyState(p.StateDir, dir); err != nil {
		t.Fatal(err)
	}
	return StartOnState(t, dir)
}

// StartOnState runs swtpm on an existing state directory (for example one
// a previous Sim used: persistent keys survive).
func StartOnState(t testing.TB, stateDir string) (*Sim, *tpm.TPM) {
	t.Helper()
	p := Provision(t)
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "tpm"), os.NewFile(uintptr(fds[1]), "swtpm")
	cmd := exec.Command("swtpm", "chardev", "--tpm2", "--fd", "3", "--tpmstate", "dir="+stateDir,
		"--flags", "not-need-init,startup-clear")
	cmd.ExtraFiles = []*os.File{theirs}
	var out lockedBuf
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	_ = theirs.Close()
	conn, err := net.FileConn(ours)
	_ = ours.Close()
	if err != nil {
		t.Fatal(err)
	}
	s := &Sim{StateDir: stateDir, RootsPEM: p.RootsPEM, cmd: cmd}
	tp := tpm.New(transport.FromReadWriteCloser(conn))
	t.Cleanup(func() {
		_ = tp.Close()
		s.stop()
		if t.Failed() {
			t.Logf("swtpm output:\n%s", out.String())
		}
	})
	return s, tp
}

// Stop ends the swtpm (its state stays in StateDir).
func (s *Sim) stop() {
	if s.cmd.ProcessState != nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
}

// Stop closes tp and stops the swtpm now (before the test ends), so its
// state directory can be reused by StartOnState.
func (s *Sim) Stop(tp *tpm.TPM) {
	_ = tp.Close()
	s.stop()
}

// TCP is a swtpm serving one client at a time on loopback TCP, for the
// built binary (`tpm: {address: tcp://…}`).
type TCP struct {
	Addr     string // tcp://127.0.0.1:PORT
	StateDir string
	RootsPEM string
	// PID is the swtpm process (tests SIGSTOP it to make a hung TPM).
	PID  int
	port int
	stop func()
}

// StartTCP runs a fresh swtpm on a free loopback port pair.
func StartTCP(t testing.TB) *TCP {
	t.Helper()
	p := Provision(t)
	dir := t.TempDir()
	if err := copyState(p.StateDir, dir); err != nil {
		t.Fatal(err)
	}
	return StartTCPOnState(t, dir)
}

// StartTCPOnState runs swtpm over TCP on an existing state directory.
func StartTCPOnState(t testing.TB, stateDir string) *TCP {
	t.Helper()
	for attempt := 0; attempt < 10; attempt++ {
		port, err := freePortPair()
		if err != nil {
			t.Fatal(err)
		}
		if s := startTCPAt(t, stateDir, port); s != nil {
			return s
		}
		// The port was taken in the meantime: try another pair.
	}
	t.Fatal("swtpm: no free port pair after 10 attempts")
	return nil
}

// Restart stops this swtpm and starts another on the same state and port,
// as when a simulator is restarted under a running client.
func (s *TCP) Restart(t testing.TB) {
	t.Helper()
	s.stop()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if ns := startTCPAt(t, s.StateDir, s.port); ns != nil {
			*s = *ns
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("swtpm: could not restart on port %d", s.port)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startTCPAt starts swtpm on port and port+1; nil when it did not come up.
func startTCPAt(t testing.TB, stateDir string, port int) *TCP {
	t.Helper()
	p := Provision(t)
	cmd := exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+stateDir,
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
		"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port+1),
		"--flags", "not-need-init,startup-clear")
	var out lockedBuf
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	addr := "127.0.0.1:" + strconv.Itoa(port)
	if !waitListening(addr, exited) {
		_ = cmd.Process.Kill()
		<-exited
		return nil
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(5 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
		})
	}
	t.Cleanup(stop)
	return &TCP{Addr: "tcp://" + addr, StateDir: stateDir, RootsPEM: p.RootsPEM, PID: cmd.Process.Pid, port: port, stop: stop}
}

// Unix is a swtpm serving one client at a time on a Unix socket (swtpm's
// unixio server): the TPM spire-agent's tpm_device_path and nodeward's
// unix:///path address both reach.
type Unix struct {
	Path     string // the socket
	Addr     string // unix:///path, for nodeward
	RootsPEM string
}

// StartUnix runs a fresh swtpm (a copy of the provisioned state) on a Unix
// socket in a short temp dir; it stops when the test ends.
func StartUnix(t testing.TB) *Unix {
	t.Helper()
	p := Provision(t)
	state := t.TempDir()
	if err := copyState(p.StateDir, state); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "swtpm-sock-") // socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	sock := filepath.Join(dir, "tpm.sock")
	cmd := exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+state,
		"--server", "type=unixio,path="+sock, "--flags", "not-need-init,startup-clear")
	var out lockedBuf
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	if !waitListeningOn("unix", sock, exited) {
		t.Fatalf("swtpm on %s did not come up:\n%s", sock, out.String())
	}
	return &Unix{Path: sock, Addr: "unix://" + sock, RootsPEM: p.RootsPEM}
}

// waitListening polls until addr accepts (without keeping the connection,
// since swtpm serves one client at a time) or swtpm exits.
func waitListening(addr string, exited <-chan struct{}) bool {
	return waitListeningOn("tcp", addr, exited)
}

func waitListeningOn(network, addr string, exited <-chan struct{}) bool {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		if c, err := net.Dial(network, addr); err == nil {
			_ = c.Close()
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return false
}

// freePortPair finds a port p with p and p+1 free right now.
func freePortPair() (int, error) {
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+1))
		_ = l.Close()
		if err == nil {
			_ = l2.Close()
			return port, nil
		}
	}
	return 0, errors.New("no free port pair")
}

func copyState(from, to string) error {
	entries, err := os.ReadDir(from)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() || e.Name() == ".lock" {
			continue
		}
		src, err := os.Open(filepath.Join(from, e.Name()))
		if err != nil {
			return err
		}
		dst, err := os.OpenFile(filepath.Join(to, e.Name()), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err == nil {
			_, err = io.Copy(dst, src)
			if cerr := dst.Close(); err == nil {
				err = cerr
			}
		}
		_ = src.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}

type lockedBuf struct {
	mu sync.Mutex
	b  []byte
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}
