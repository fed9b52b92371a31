package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// serveAdmin serves /healthz (the process is alive), /readyz (the CA is
// loaded and the Workload API socket serves), /metrics (Prometheus) and
// /v1/status (JSON for `nodeward status`) on l until ctx is done.
func (a *Agent) serveAdmin(ctx context.Context, l net.Listener) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if reason := a.NotReadyReason(); reason != "" {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: " + reason + "\n"))
			return
		}
		st := a.store.Stats()
		_, _ = fmt.Fprintf(w, "ready\nentries %d\nx509_svids %d\n", st.Entries, st.X509SVIDs)
	})
	mux.HandleFunc("GET /v1/status", a.serveStatus)
	mux.HandleFunc("GET /v1/inventory", a.serveInventory)
	mux.HandleFunc("GET /.well-known/openid-configuration", a.serveDiscovery)
	mux.HandleFunc("GET /keys", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "max-age=300")
		if a.ca == nil {
			http.Error(w, "fleet mode: the SPIRE server publishes the JWT keys (its OIDC discovery provider)", http.StatusNotFound)
			return
		}
		_, _ = w.Write(a.ca.OIDCJWKS())
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics.Registry, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin listener: %w", err)
	}
	return nil
}

// serveDiscovery serves an OpenID Provider configuration naming the JWT
// signing keys, what IdPs (Keycloak, Entra, AWS IAM, Okta) need to trust
// JWT-SVIDs. The issuer is jwt_issuer; without one the admin address stands
// in, and JWT-SVIDs carry no "iss".
func (a *Agent) serveDiscovery(w http.ResponseWriter, r *http.Request) {
	if a.ca == nil {
		http.Error(w, "fleet mode: the SPIRE server publishes the JWT keys (its OIDC discovery provider)", http.StatusNotFound)
		return
	}
	issuer := a.ca.JWTIssuer()
	if issuer == "" {
		issuer = "http://" + r.Host
	}
	issuer = strings.TrimSuffix(issuer, "/")
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"issuer":                                issuer,
		"jwks_uri":                              issuer + "/keys",
		"authorization_endpoint":                "",
		"response_types_supported":              []string{"id_token"},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": []string{"ES256"},
	})
}
