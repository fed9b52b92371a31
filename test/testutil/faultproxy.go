package testutil

import (
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"
	"time"
)

// Fault modes of a FaultProxy.
const (
	FaultNone    = iota // pass requests through
	FaultReset          // close the connection without an answer (IdP down)
	Fault503            // 503 with Retry-After: 1
	Fault429            // 429 with Retry-After: 1
	FaultGarbage        // 200 with an HTML body
	FaultSlow           // pass through after a delay longer than the broker's timeout
)

// FaultProxy is a fault-injecting reverse proxy in front of a real IdP, for
// chaos tests: latency, 5xx, 429 with Retry-After, resets, garbage bodies and
// total outage, switched at run time.
type FaultProxy struct {
	URL      string
	mode     atomic.Int32
	Requests atomic.Int64
}

// StartFaultProxy proxies to target until the test ends.
func StartFaultProxy(t testing.TB, target string) *FaultProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	p := &FaultProxy{}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.URL = "http://" + l.Addr().String()
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.Requests.Add(1)
		switch p.mode.Load() {
		case FaultReset:
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					_ = c.Close()
					return
				}
			}
			panic(http.ErrAbortHandler)
		case Fault503:
			w.Header().Set("Retry-After", "1")
			http.Error(w, `{"error":"temporarily_unavailable"}`, http.StatusServiceUnavailable)
		case Fault429:
			w.Header().Set("Retry-After", "1")
			http.Error(w, `{"error":"slow_down"}`, http.StatusTooManyRequests)
		case FaultGarbage:
			w.Header().Set("Content-Type", "text/html")
			_, _ = w.Write([]byte("<html>maintenance</html>"))
		case FaultSlow:
			time.Sleep(3 * time.Second)
			rp.ServeHTTP(w, r)
		default:
			rp.ServeHTTP(w, r)
		}
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return p
}

// Set switches the fault mode.
func (p *FaultProxy) Set(mode int) { p.mode.Store(int32(mode)) }
