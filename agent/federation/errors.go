package federation

import "errors"

// Sentinel errors.
var (
	// ErrBadBundle marks a bundle that was refused: it did not parse, is
	// for another trust domain, has no X.509 authority or is too large.
	ErrBadBundle = errors.New("bundle refused")
	// ErrConfig marks an invalid EndpointConfig or FetcherConfig.
	ErrConfig = errors.New("invalid federation config")
)

// Profile is a bundle endpoint profile.
type Profile string

// The two bundle endpoint profiles of the SPIFFE Trust Domain and Bundle spec.
const (
	ProfileHTTPSSPIFFE Profile = "https_spiffe"
	ProfileHTTPSWeb    Profile = "https_web"
)

// MaxBundleSize bounds a fetched (or bootstrap, or cached) bundle document.
const MaxBundleSize = 1 << 20
