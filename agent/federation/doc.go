// Package federation serves this trust domain's SPIFFE bundle on a bundle
// endpoint (Endpoint) and fetches foreign trust domains' bundles from theirs
// (Fetcher), per the SPIFFE Trust Domain and Bundle specification: a bundle
// is a JWKS document with spiffe_sequence and spiffe_refresh_hint, served
// over HTTPS with one of two endpoint profiles, https_spiffe (the endpoint
// presents an X509-SVID that the client verifies against the last bundle it
// holds of that trust domain) and https_web (web PKI).
//
// Security: a bundle is public, so the endpoint serves it to anyone; what it
// bounds is what a client can make it hold (header size, timeouts, a
// connection cap, only GET and HEAD of "/"). A fetched bundle is the trust
// anchor of a foreign trust domain, so it is accepted only from an
// authenticated endpoint, only when it parses, holds at least one X.509
// authority and names no other trust domain, and only up to MaxBundleSize;
// anything else leaves the last good bundle in place. The on-disk cache lives
// in a directory checked as data_dir is (internal/safefs): a symlinked or
// foreign-owned cache file is refused. Not a boundary: with https_web whoever
// the web PKI certifies for the endpoint's name decides the bundle, and with
// https_spiffe the bootstrap bundle is trusted as given (trust on first use of
// that file).
package federation
