package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/nodeward/nodeward/agent/config"
	"github.com/nodeward/nodeward/agent/federation"
	"github.com/nodeward/nodeward/agent/identity"
)

// federationMode is SPIFFE federation in standalone mode: foreign trust
// domains' bundles fetched and published to the entries that federate with
// them, and this trust domain's bundle served on a bundle endpoint.
type federationMode struct {
	fetcher  *federation.Fetcher   // nil: no federates_with
	endpoint *federation.Endpoint  // nil: no bundle_endpoint
	src      *identity.LocalSource // receives the fetched bundles

	mu   sync.Mutex
	svid *x509svid.SVID // the endpoint's (https_spiffe)
}

// endpointSVIDTTL is the lifetime of the bundle endpoint's X509-SVID; it
// is re-minted at half of it.
const endpointSVIDTTL = time.Hour

// newFederation sets up what the federation section asks for; the
// fetched bundles (from the on-disk cache at first) are published at once.
func (a *Agent) newFederation(cfg *config.Agent, td spiffeid.TrustDomain) (*federationMode, error) {
	fc := cfg.Federation
	if fc == nil {
		return nil, nil
	}
	src, ok := a.store.Source().(*identity.LocalSource)
	if !ok {
		return nil, fmt.Errorf("federation: only in standalone mode")
	}
	f := &federationMode{src: src}
	if len(fc.FederatesWith) > 0 {
		fetcher, err := federation.NewFetcher(federation.FetcherConfigFrom(fc, cfg.DataDir, a.log.With("component", "federation")))
		if err != nil {
			return nil, fmt.Errorf("federation: %w", err)
		}
		f.fetcher = fetcher
		if err := src.SetFederated(fetcher.Bundles()); err != nil {
			return nil, fmt.Errorf("federation: %w", err)
		}
	}
	if be := fc.BundleEndpoint; be != nil {
		ec := federation.EndpointConfigFrom(be, a.log.With("component", "bundle_endpoint"))
		ec.Bundle = a.ca.Bundle
		id := federation.EndpointID(td)
		ec.SVID = func() (*x509svid.SVID, error) { return f.endpointSVID(a, id) }
		ep, err := federation.NewEndpoint(ec)
		if err != nil {
			return nil, err
		}
		f.endpoint = ep
	}
	return f, nil
}

// endpointSVID returns the bundle endpoint's X509-SVID, minted by the
// local CA and re-minted past half its life.
func (f *federationMode) endpointSVID(a *Agent, id spiffeid.ID) (*x509svid.SVID, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	if sv := f.svid; sv != nil {
		leaf := sv.Certificates[0]
		if now.Before(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)) {
			return sv, nil
		}
	}
	m, err := a.ca.MintX509SVID(id, nil, endpointSVIDTTL)
	if err != nil {
		return nil, fmt.Errorf("bundle endpoint SVID: %w", err)
	}
	f.svid = &x509svid.SVID{ID: id, Certificates: m.Certificates, PrivateKey: m.PrivateKey}
	return f.svid, nil
}

// run fetches and serves until ctx is done, publishing every fetched
// bundle change to the identity source (open streams get it at once).
func (f *federationMode) run(ctx context.Context, a *Agent) error {
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	if f.endpoint != nil {
		wg.Add(1)
		go func() { defer wg.Done(); errc <- f.endpoint.Run(ctx) }()
	}
	if f.fetcher != nil {
		wg.Add(2)
		go func() { defer wg.Done(); errc <- f.fetcher.Run(ctx) }()
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case <-f.fetcher.Changed():
					if err := f.src.SetFederated(f.fetcher.Bundles()); err != nil {
						a.log.Error("federated bundles not published", "err", err)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			return err
		}
	}
	return nil
}

// status is the federation part of `nodeward status`.
func (f *federationMode) status() *FederationStatus {
	st := &FederationStatus{}
	if f.endpoint != nil {
		st.BundleEndpoint = f.endpoint.Addr().String()
	}
	if f.fetcher != nil {
		for _, s := range f.fetcher.Status() {
			fs := FederatedStatus{TrustDomain: s.TrustDomain.Name(), URL: s.URL, Profile: string(s.Profile), Source: s.Source,
				Sequence: s.Sequence, LastError: s.LastError, Failures: s.Failures}
			if !s.LastRefresh.IsZero() {
				t := s.LastRefresh
				fs.LastRefresh = &t
			}
			if !s.NextRefresh.IsZero() {
				t := s.NextRefresh
				fs.NextRefresh = &t
			}
			st.FederatesWith = append(st.FederatesWith, fs)
		}
	}
	return st
}

// FederationStatus is the federation section of `nodeward status`.
type FederationStatus struct {
	// BundleEndpoint is the address the bundle endpoint listens on.
	BundleEndpoint string            `json:"bundle_endpoint,omitempty"`
	FederatesWith  []FederatedStatus `json:"federates_with,omitempty"`
}

// FederatedStatus is one foreign trust domain's bundle refresh state.
type FederatedStatus struct {
	TrustDomain string     `json:"trust_domain"`
	URL         string     `json:"url"`
	Profile     string     `json:"profile"`
	Source      string     `json:"source"` // none, bootstrap, cache, endpoint
	Sequence    uint64     `json:"sequence,omitempty"`
	LastRefresh *time.Time `json:"last_refresh,omitempty"`
	NextRefresh *time.Time `json:"next_refresh,omitempty"`
	LastError   string     `json:"last_error,omitempty"`
	Failures    int        `json:"failures,omitempty"`
}
