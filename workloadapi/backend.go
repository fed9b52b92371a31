// Package workloadapi serves the SPIFFE Workload API (the gRPC service of
// go-spiffe's proto/spiffe/workload package) on a Unix socket whose callers
// are identified by their peer credentials.
//
// Security: this package is the API edge. Every RPC requires the
// "workload.spiffe.io: true" metadata (a browser or SSRF-driven client cannot
// set it); every caller is attested from kernel-supplied peer credentials,
// never from anything the caller says about itself; a caller with no identity
// gets PermissionDenied, never an empty answer. Errors returned to callers
// carry no key material or tokens.
package workloadapi

import (
	"context"
	"errors"
	"time"

	"github.com/nodeward/nodeward/attestors/selector"
	"github.com/nodeward/nodeward/internal/audit"
	"github.com/nodeward/nodeward/internal/peercred"
)

// Sentinel errors a Backend returns; the server maps them to gRPC codes.
var (
	// ErrNoIdentity: the caller matches no registration entry (PermissionDenied).
	ErrNoIdentity = errors.New("no identity issued")
	// ErrNotEntitled: the caller asked for a SPIFFE ID it does not have (PermissionDenied).
	ErrNotEntitled = errors.New("not entitled to the requested SPIFFE ID")
	// ErrUnavailable: no valid SVID can be issued now, e.g. the CA's
	// intermediate expired while the TPM did not answer (Unavailable: the
	// caller retries).
	ErrUnavailable = errors.New("no valid SVID can be issued now")
	// ErrInvalidToken: ValidateJWTSVID was given a token that does not validate (InvalidArgument).
	ErrInvalidToken = errors.New("invalid JWT-SVID")
	// ErrCallerChanged: the caller's uid, gid or groups differ from those it
	// connected with (PermissionDenied, denial reason identity_changed). A
	// changed binary is peercred.ErrExecChanged, counted the same way.
	ErrCallerChanged = errors.New("caller's credentials changed since connect")
)

// X509SVID is one identity as sent to a workload.
type X509SVID struct {
	SPIFFEID string
	ChainDER []byte // leaf first, concatenated DER
	KeyDER   []byte // PKCS#8
	Hint     string
	// For the audit trail.
	EntryID   string
	Serial    string
	ExpiresAt time.Time
}

// X509State is the whole X.509 view of a caller at one moment.
type X509State struct {
	SVIDs      []X509SVID
	BundleDER  []byte            // the caller's own trust domain bundle
	Federated  map[string][]byte // trust domain ID -> DER bundle
	TrustDomID string            // "spiffe://td" of BundleDER
}

// JWTSVID is one JWT-SVID as sent to a workload.
type JWTSVID struct {
	SPIFFEID string
	Token    string
	Hint     string
	// For the audit trail.
	EntryID   string
	JTI       string
	ExpiresAt time.Time
}

// Backend is the identity core as the server needs it. The agent implements it.
type Backend interface {
	// Attest identifies the process behind peer and returns its selectors.
	// It must fail closed: an error means no identity at all.
	Attest(ctx context.Context, peer *peercred.Info) ([]selector.Selector, error)
	// X509 returns the caller's X.509 state, or ErrNoIdentity.
	X509(sels []selector.Selector) (*X509State, error)
	// X509Bundles returns trust domain ID -> DER bundle for an entitled caller.
	X509Bundles(sels []selector.Selector) (map[string][]byte, error)
	// JWTSVIDs returns JWT-SVIDs for audience; id is "" or a SPIFFE ID to restrict to.
	JWTSVIDs(sels []selector.Selector, id string, audience []string) ([]JWTSVID, error)
	// JWTBundles returns trust domain ID -> JWKS document for an entitled caller.
	JWTBundles(sels []selector.Selector) (map[string][]byte, error)
	// ValidateJWTSVID validates token for audience and returns its subject and claims.
	ValidateJWTSVID(token, audience string) (id string, claims map[string]any, err error)
	// Changed returns a channel closed at the next change of anything a stream may have sent.
	Changed() <-chan struct{}
}

// Observer receives the server's measurements (the agent feeds them to
// Prometheus). Implementations must be fast and safe for concurrent use.
type Observer interface {
	// RPCDone is called once per finished RPC with its gRPC code.
	RPCDone(rpc string, code string, d time.Duration)
	// StreamOpen is called with +1 when a stream starts and -1 when it ends.
	StreamOpen(rpc string, delta int)
	// Issued counts SVIDs sent to workloads, by kind (x509, jwt).
	Issued(kind string, n int)
	// Denied counts refused requests by reason.
	Denied(reason string)
}

// IssueRecorder is told of every SVID sent to a caller, with the entry it
// came from (the identity inventory). It must not block.
type IssueRecorder interface {
	IssuedTo(entryID, kind string, caller *audit.Caller)
}
