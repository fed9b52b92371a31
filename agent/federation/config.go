package federation

import (
	"log/slog"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodeward/nodeward/agent/config"
)

// EndpointPath is the path of the bundle endpoint's SPIFFE ID
// (https_spiffe): spiffe://<trust domain>/nodeward/bundle-endpoint.
const EndpointPath = "/nodeward/bundle-endpoint"

// EndpointID is the SPIFFE ID the https_spiffe bundle endpoint of td
// presents (the ID to give other agents as endpoint_spiffe_id).
func EndpointID(td spiffeid.TrustDomain) spiffeid.ID {
	id, err := spiffeid.FromPath(td, EndpointPath)
	if err != nil {
		panic(err) // EndpointPath is a valid path
	}
	return id
}

// CacheDir is where foreign bundles are cached: data_dir/federation.
func CacheDir(dataDir string) string { return filepath.Join(dataDir, "federation") }

// EndpointConfigFrom maps the config's bundle_endpoint section; the caller
// sets Bundle and, for https_spiffe, SVID (an X509-SVID of EndpointID).
func EndpointConfigFrom(be *config.BundleEndpoint, log *slog.Logger) EndpointConfig {
	return EndpointConfig{
		Listen:      be.Listen,
		Profile:     Profile(be.Profile),
		CertFile:    be.Cert,
		KeyFile:     be.Key,
		RefreshHint: time.Duration(be.RefreshHint),
		Log:         log,
	}
}

// FetcherConfigFrom maps the config's federates_with section, caching in
// CacheDir(dataDir).
func FetcherConfigFrom(fed *config.Federation, dataDir string, log *slog.Logger) FetcherConfig {
	fc := FetcherConfig{CacheDir: CacheDir(dataDir), Log: log}
	for _, fw := range fed.FederatesWith {
		fc.Peers = append(fc.Peers, Peer{
			TrustDomain: fw.TrustDomain,
			URL:         fw.URL,
			Profile:     Profile(fw.Profile),
			EndpointID:  fw.EndpointSPIFFEID,
			BundleFile:  fw.Bundle,
			CAFile:      fw.CA,
		})
	}
	return fc
}
