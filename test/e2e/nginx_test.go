package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/nodeward/nodeward/test/testutil"
)

// nginxPath is Debian's nginx; .ci/run installs it.
const nginxPath = "/usr/sbin/nginx"

// TestNginxServesRotatedSVIDsFromFiles: the broker, run as a sidecar with
// only svid_files, writes the X.509-SVID, key and bundle; a real nginx serves
// mTLS from those files; curl with a client SVID gets through; a forced
// rotation (the entry's DNS names change, SIGHUP to the agent) rewrites the
// files and HUPs nginx through its PID file, and nginx serves the new
// certificate while a client hammering it sees no failed request.
func TestNginxServesRotatedSVIDsFromFiles(t *testing.T) {
	if _, err := os.Stat(nginxPath); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("nginx missing in CI (.ci/run installs it): %v", err)
		}
		t.Skip("nginx not installed (apt-get install nginx)")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (nginx master, files owned as configured)")
	}
	dir := testutil.SocketDir(t)
	admin := "127.0.0.1:" + testutil.FreePort(t)
	entries := func(dns string) string {
		return fmt.Sprintf("admin_listen: %s\nentries:\n  - id: web\n    spiffe_id: spiffe://example.org/web\n    selectors: [unix:uid:%d, \"unix:path:%s\"]\n    dns_names: [%s]\n",
			admin, os.Geteuid(), bin, dns)
	}
	cfg, sock := testutil.WriteConfig(t, dir, "example.org", entries("localhost"))
	agent := testutil.StartAgent(t, bin, cfg, sock)
	testutil.WaitServing(t, sock, 10*time.Second)

	tlsDir := filepath.Join(dir, "tls")
	pidFile := filepath.Join(dir, "nginx.pid")
	bcfg := filepath.Join(dir, "sidecar.yaml")
	err := os.WriteFile(bcfg, []byte(fmt.Sprintf(`workload_socket: unix://%s
listen: %s/broker.sock
svid_files:
  - x509_svid: %s/svid.pem
    x509_key: %s/svid_key.pem
    x509_bundle: %s/bundle.pem
    on_rotate:
      signal: HUP
      pid_file: %s
      binary: %s
  - jwt_svids: [{audience: reports, path: %s/jwt/reports.token}]
    jwt_bundle: %s/jwt/bundle.jwks
`, sock, dir, tlsDir, tlsDir, tlsDir, pidFile, nginxPath, dir, dir)), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	sidecar := testutil.StartProcess(t, bin, "", "broker", "--config", bcfg)
	waitFile(t, filepath.Join(tlsDir, "svid.pem"), sidecar)
	if fi, err := os.Stat(filepath.Join(tlsDir, "svid_key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}

	// The JWT-SVID file validates against the JWT bundle file.
	waitFile(t, filepath.Join(dir, "jwt", "reports.token"), sidecar)
	waitFile(t, filepath.Join(dir, "jwt", "bundle.jwks"), sidecar)
	jb, err := jwtbundle.Parse(spiffeid.RequireTrustDomainFromString("example.org"), mustReadFile(t, filepath.Join(dir, "jwt", "bundle.jwks")))
	if err != nil {
		t.Fatal(err)
	}
	tok := strings.TrimSpace(string(mustReadFile(t, filepath.Join(dir, "jwt", "reports.token"))))
	if js, err := jwtsvid.ParseAndValidate(tok, jb, []string{"reports"}); err != nil || js.ID.String() != "spiffe://example.org/web" {
		t.Fatalf("JWT-SVID file: %v", err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "jwt", "reports.token")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("JWT-SVID file mode %v, want 0600", fi.Mode().Perm())
	}

	port := testutil.FreePort(t)
	nginx := startNginx(t, dir, tlsDir, port, pidFile)
	_ = nginx

	// A client SVID (the same workload identity, fetched by the CLI).
	clientDir := filepath.Join(dir, "client")
	if _, errOut, code := testutil.Run(t, bin, nil, "fetch", "x509", "--socket", sock, "--out", clientDir); code != 0 {
		t.Fatalf("fetch client SVID: %s", errOut)
	}
	url := "https://localhost:" + port + "/"
	curl := func(withCert bool) (string, int) {
		args := []string{"-sS", "--resolve", "localhost:" + port + ":127.0.0.1", "--cacert", filepath.Join(tlsDir, "bundle.pem"), "-o", "-", "-w", "\n%{http_code}"}
		if withCert {
			args = append(args, "--cert", filepath.Join(clientDir, "svid.pem"), "--key", filepath.Join(clientDir, "svid_key.pem"))
		}
		out, _ := exec.Command("curl", append(args, url)...).CombinedOutput()
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		var code int
		fmt.Sscanf(lines[len(lines)-1], "%d", &code)
		return string(out), code
	}
	if out, code := curl(true); code != 200 || !strings.Contains(out, "verified SUCCESS") {
		t.Fatalf("curl with a client SVID: %d %s", code, out)
	}
	if _, code := curl(false); code != 400 {
		t.Fatalf("curl without a client certificate: HTTP %d, want 400 (nginx requires one)", code)
	}

	// Hammer nginx with fresh TLS connections while the SVID rotates.
	clientCert, err := tls.LoadX509KeyPair(filepath.Join(clientDir, "svid.pem"), filepath.Join(clientDir, "svid_key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(mustReadFile(t, filepath.Join(tlsDir, "bundle.pem")))
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		TLSClientConfig:   &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{clientCert}, ServerName: "localhost"},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", "127.0.0.1:"+port)
		},
	}}
	var (
		ok, failed atomic.Int64
		mu         sync.Mutex
		serials    = map[string]bool{}
		firstErr   error
	)
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				resp, err := client.Get(url)
				if err != nil {
					failed.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				_ = resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
					continue
				}
				ok.Add(1)
				mu.Lock()
				serials[resp.TLS.PeerCertificates[0].SerialNumber.String()] = true
				mu.Unlock()
			}
		})
	}
	served := func() int { mu.Lock(); defer mu.Unlock(); return len(serials) }
	deadline := time.Now().Add(10 * time.Second)
	for ok.Load() < 20 {
		if time.Now().After(deadline) {
			t.Fatal("the client never got going")
		}
		time.Sleep(10 * time.Millisecond)
	}
	before := served()
	// Forced rotation: a new DNS name means a new certificate.
	testutil.WriteConfig(t, dir, "example.org", entries("localhost, web.internal"))
	if err := agent.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(20 * time.Second)
	for served() <= before {
		if time.Now().After(deadline) {
			stop()
			wg.Wait()
			t.Fatalf("nginx never served the rotated certificate (sidecar log:\n%s)", sidecar.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	afterRotation := ok.Load()
	for ok.Load() < afterRotation+20 {
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d of %d requests failed across the rotation; first: %v", n, n+ok.Load(), firstErr)
	}
	leaf := mustReadFile(t, filepath.Join(tlsDir, "svid.pem"))
	if !strings.Contains(string(leaf), "CERTIFICATE") {
		t.Fatal("svid.pem lost its certificate")
	}
	t.Logf("%d requests, 0 failed, %d server certificates seen", ok.Load(), served())
}

func startNginx(t *testing.T, dir, tlsDir, port, pidFile string) *exec.Cmd {
	t.Helper()
	conf := filepath.Join(dir, "nginx.conf")
	tmp := filepath.Join(dir, "nginx-tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	err := os.WriteFile(conf, []byte(fmt.Sprintf(`daemon off;
worker_processes 1;
pid %[1]s;
error_log %[2]s/nginx-error.log info;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path %[3]s/body;
  proxy_temp_path %[3]s/proxy;
  fastcgi_temp_path %[3]s/fastcgi;
  uwsgi_temp_path %[3]s/uwsgi;
  scgi_temp_path %[3]s/scgi;
  server {
    listen 127.0.0.1:%[4]s ssl;
    ssl_certificate %[5]s/svid.pem;
    ssl_certificate_key %[5]s/svid_key.pem;
    ssl_client_certificate %[5]s/bundle.pem;
    ssl_verify_client on;
    location / { return 200 "verified $ssl_client_verify\n"; }
  }
}
`, pidFile, dir, tmp, port, tlsDir)), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(nginxPath, "-c", conf, "-e", filepath.Join(dir, "nginx-error.log"))
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGQUIT)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			logData, _ := os.ReadFile(filepath.Join(dir, "nginx-error.log"))
			t.Logf("nginx output:\n%s\nerror log:\n%s", out.String(), logData)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", "127.0.0.1:"+port)
		if err == nil {
			_ = c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx never listened: %s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cmd
}

func waitFile(t *testing.T, p string, proc *testutil.Agent) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(p); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never written; log:\n%s", p, proc.Log())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func mustReadFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
