package federation

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Endpoint limits.
const (
	// DefaultMaxConns caps the endpoint's open connections.
	DefaultMaxConns = 128
	// DefaultRefreshHint is the spiffe_refresh_hint published by default.
	DefaultRefreshHint = 5 * time.Minute
	maxHeaderBytes     = 8 << 10
	readTimeout        = 10 * time.Second
	writeTimeout       = 10 * time.Second
	idleTimeout        = 30 * time.Second
)

// EndpointConfig configures a bundle endpoint.
type EndpointConfig struct {
	// Listen is the host:port to listen on.
	Listen string
	// Profile is ProfileHTTPSSPIFFE or ProfileHTTPSWeb.
	Profile Profile
	// Bundle returns this trust domain's current bundle (X.509 authorities
	// and JWT keys; its sequence number is published as is). It must not
	// be nil and must return a bundle.
	Bundle func() *spiffebundle.Bundle
	// SVID returns the endpoint's X509-SVID (https_spiffe), called on each
	// TLS handshake so that a rotated SVID is used at once.
	SVID func() (*x509svid.SVID, error)
	// CertFile and KeyFile are the web PKI certificate chain and key
	// (https_web), reloaded when either file changes on disk.
	CertFile, KeyFile string
	// RefreshHint is the spiffe_refresh_hint published (default 5m).
	RefreshHint time.Duration
	// MaxConns caps open connections (default DefaultMaxConns); a client
	// beyond it waits in the kernel's accept queue.
	MaxConns int
	// Log receives the endpoint's errors (default: discarded).
	Log *slog.Logger
}

// Endpoint is a SPIFFE bundle endpoint: an HTTPS server that answers GET /
// with this trust domain's bundle.
type Endpoint struct {
	cfg EndpointConfig
	ln  net.Listener
	srv *http.Server
}

// NewEndpoint checks cfg and listens on cfg.Listen (serving starts with Run).
func NewEndpoint(cfg EndpointConfig) (*Endpoint, error) {
	if cfg.Bundle == nil {
		return nil, fmt.Errorf("bundle endpoint: no bundle source: %w", ErrConfig)
	}
	if cfg.RefreshHint <= 0 {
		cfg.RefreshHint = DefaultRefreshHint
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	var tc *tls.Config
	switch cfg.Profile {
	case ProfileHTTPSSPIFFE:
		if cfg.SVID == nil {
			return nil, fmt.Errorf("bundle endpoint: https_spiffe needs an X509-SVID source: %w", ErrConfig)
		}
		tc = tlsconfig.TLSServerConfig(svidSource(cfg.SVID))
	case ProfileHTTPSWeb:
		kp := &keyPair{certFile: cfg.CertFile, keyFile: cfg.KeyFile}
		if _, err := kp.get(); err != nil { // fail at start, not at the first client
			return nil, fmt.Errorf("bundle endpoint: %w", err)
		}
		tc = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			c, err := kp.get()
			if err != nil {
				cfg.Log.Error("bundle endpoint: certificate", "err", err)
			}
			return c, err
		}}
	default:
		return nil, fmt.Errorf("bundle endpoint: unknown profile %q: %w", cfg.Profile, ErrConfig)
	}
	tc.NextProtos = []string{"h2", "http/1.1"}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("bundle endpoint: listen: %w", err)
	}
	e := &Endpoint{cfg: cfg, ln: tls.NewListener(&limitListener{Listener: ln, sem: make(chan struct{}, cfg.MaxConns)}, tc)}
	e.srv = &http.Server{
		Handler:           http.HandlerFunc(e.serveHTTP),
		ReadHeaderTimeout: readTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(cfg.Log.Handler(), slog.LevelDebug),
	}
	return e, nil
}

// Addr is the address the endpoint listens on.
func (e *Endpoint) Addr() net.Addr { return e.ln.Addr() }

// Run serves until ctx is done, then closes the listener and every
// connection.
func (e *Endpoint) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- e.srv.Serve(e.ln) }()
	select {
	case <-ctx.Done():
		_ = e.srv.Close() // ends Serve; open connections are cut
		<-errc
		return nil
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("bundle endpoint: %w", err)
	}
}

// Close stops the endpoint without Run (e.g. when Run was never called).
func (e *Endpoint) Close() error { return e.srv.Close() }

func (e *Endpoint) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	b := e.cfg.Bundle()
	if b == nil {
		http.Error(w, "bundle not available", http.StatusServiceUnavailable)
		return
	}
	// The source's bundle is shared: publish a copy with the hint.
	b = b.Clone()
	b.SetRefreshHint(e.cfg.RefreshHint)
	data, err := b.Marshal()
	if err != nil {
		e.cfg.Log.Error("bundle endpoint: marshal", "err", err)
		http.Error(w, "bundle not available", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.Header().Set("Cache-Control", "no-store")
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(data) // a client that went away is its business
}

// svidSource adapts a function to go-spiffe's x509svid.Source.
type svidSource func() (*x509svid.SVID, error)

func (f svidSource) GetX509SVID() (*x509svid.SVID, error) { return f() }

// keyPair holds the https_web certificate, reloaded when the files change.
type keyPair struct {
	certFile, keyFile string
	mu                sync.Mutex
	stamp             string
	cert              *tls.Certificate
}

// get returns the key pair, reloading it when the files' size or mtime
// changed since the last load (a stat of each per handshake). A pair that
// fails to load keeps the previous one in use.
func (k *keyPair) get() (*tls.Certificate, error) {
	stamp, err := fileStamp(k.certFile, k.keyFile)
	k.mu.Lock()
	defer k.mu.Unlock()
	if err == nil && stamp == k.stamp && k.cert != nil {
		return k.cert, nil
	}
	if err == nil {
		var c tls.Certificate
		if c, err = loadKeyPair(k.certFile, k.keyFile); err == nil {
			k.cert, k.stamp = &c, stamp
			return k.cert, nil
		}
	}
	if k.cert != nil {
		return k.cert, nil // keep serving the last good pair
	}
	return nil, err
}
