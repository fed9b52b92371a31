package identity

import (
	"context"
	"crypto/x509"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodeward/nodeward/agent/ca"
	"github.com/nodeward/nodeward/agent/policy"
)

// Source is where the store's signatures and bundles come from: the local
// CA in standalone mode (LocalSource), a SPIRE server in fleet mode. The
// policy (which entries exist) reaches the store through SetIndex from
// whoever owns it: the config loader, or the server sync.
//
// Implementations are safe for concurrent use. Mint calls may block on I/O
// (a server round trip): the store never holds its lock across them, and
// concurrent requests for one entry share one call.
type Source interface {
	// TrustDomain is the trust domain of the identities this source mints.
	TrustDomain() spiffeid.TrustDomain
	// MintX509SVID returns a fresh X.509-SVID for e: its SPIFFE ID, DNS
	// names and TTL (a server may apply its own).
	MintX509SVID(ctx context.Context, e *policy.Entry) (*ca.X509SVID, error)
	// MintJWTSVID returns a fresh JWT-SVID for e and the audience.
	MintJWTSVID(ctx context.Context, e *policy.Entry, audience []string) (*ca.JWT, error)
	// Bundles returns the current bundle view. It is immutable and cheap
	// to get (it sits on the request path).
	Bundles() *Bundles
	// BundlesChanged returns a channel closed at the next change of
	// Bundles (then call it again).
	BundlesChanged() <-chan struct{}
}

// Staler is implemented by a source whose signing authorities can be
// withdrawn before they expire (tainted): an SVID they signed is re-minted
// at once, although it is still valid.
type Staler interface {
	// StaleX509 reports whether chain (leaf first) must be re-minted now.
	StaleX509(chain []*x509.Certificate) bool
}

// Bundles is one consistent view of the trust bundles a source publishes:
// its own trust domain's and the federated ones. Values are immutable.
type Bundles struct {
	// Own is the source's trust domain bundle (X.509 authorities and JWT keys).
	Own *spiffebundle.Bundle
	// OwnX509DER is the concatenated DER of Own's X.509 authorities, and
	// OwnJWKS Own's JWT keys as a JWKS document (what the Workload API sends).
	OwnX509DER []byte
	OwnJWKS    []byte
	// Federated holds foreign trust domains' bundles, sent to workloads
	// whose entries federate with them.
	Federated map[spiffeid.TrustDomain]*FederatedBundle
	// Set holds Own and every federated bundle (JWT-SVID validation).
	Set *spiffebundle.Set
}

// FederatedBundle is one foreign trust domain's bundle, pre-encoded.
type FederatedBundle struct {
	Bundle  *spiffebundle.Bundle
	X509DER []byte
	JWKS    []byte
}

// NewBundles builds a Bundles view from own and the federated bundles,
// encoding each once.
func NewBundles(own *spiffebundle.Bundle, federated ...*spiffebundle.Bundle) (*Bundles, error) {
	ownDER, ownJWKS, err := encodeBundle(own)
	if err != nil {
		return nil, err
	}
	b := &Bundles{Own: own, OwnX509DER: ownDER, OwnJWKS: ownJWKS,
		Federated: make(map[spiffeid.TrustDomain]*FederatedBundle, len(federated)),
		Set:       spiffebundle.NewSet(own)}
	for _, f := range federated {
		if f.TrustDomain() == own.TrustDomain() {
			return nil, fmt.Errorf("federated bundle for the own trust domain %s", own.TrustDomain())
		}
		der, jwks, err := encodeBundle(f)
		if err != nil {
			return nil, err
		}
		b.Federated[f.TrustDomain()] = &FederatedBundle{Bundle: f, X509DER: der, JWKS: jwks}
		b.Set.Add(f)
	}
	return b, nil
}

// encodeBundle returns the concatenated DER of b's X.509 authorities and its
// JWT keys as a JWKS document.
func encodeBundle(b *spiffebundle.Bundle) ([]byte, []byte, error) {
	var der []byte
	for _, c := range b.X509Authorities() {
		der = append(der, c.Raw...)
	}
	// Only the keys: a SPIFFE bundle's own fields (sequence, refresh hint)
	// are not part of what the Workload API sends.
	jb := spiffebundle.New(b.TrustDomain())
	keys := b.JWTAuthorities()
	kids := make([]string, 0, len(keys))
	for kid := range keys {
		kids = append(kids, kid)
	}
	sort.Strings(kids)
	for _, kid := range kids {
		if err := jb.AddJWTAuthority(kid, keys[kid]); err != nil {
			return nil, nil, fmt.Errorf("bundle of %s: JWT key %q: %w", b.TrustDomain(), kid, err)
		}
	}
	jwks, err := jb.Marshal()
	if err != nil {
		return nil, nil, fmt.Errorf("bundle of %s: encode JWKS: %w", b.TrustDomain(), err)
	}
	return der, jwks, nil
}

// LocalSource mints with the node's own CA (standalone mode): its bundle
// follows the CA's key lifecycle (Run), and the bundles of federated trust
// domains are handed to it (SetFederated).
type LocalSource struct {
	ca      *ca.CA
	bundles atomic.Pointer[Bundles]

	mu      sync.Mutex
	changed chan struct{}
	feds    map[spiffeid.TrustDomain]*spiffebundle.Bundle
}

var (
	_ Staler    = (*LocalSource)(nil)
	_ JWTStaler = (*LocalSource)(nil)
)

var _ Source = (*LocalSource)(nil)

// NewLocalSource returns a Source backed by c.
func NewLocalSource(c *ca.CA) (*LocalSource, error) {
	l := &LocalSource{ca: c, changed: make(chan struct{})}
	if err := l.publish(nil, false); err != nil {
		return nil, err
	}
	return l, nil
}

// Run follows the CA's key lifecycle until ctx is done: every new bundle
// snapshot (a prepared, retired or tainted key) is published.
func (l *LocalSource) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-l.ca.Changed():
			if err := l.publish(nil, true); err != nil {
				return err
			}
		}
	}
}

// StaleX509 implements Staler: the CA tainted (or dropped) the authority
// that signed chain.
func (l *LocalSource) StaleX509(chain []*x509.Certificate) bool { return l.ca.Tainted(chain) }

// StaleJWTKey implements JWTStaler.
func (l *LocalSource) StaleJWTKey(kid string) bool { return l.ca.JWTKeyTainted(kid) }

// SetFederated publishes the federated trust domains' bundles (from the
// federation fetcher) next to the CA's own, and wakes the store.
func (l *LocalSource) SetFederated(feds map[spiffeid.TrustDomain]*spiffebundle.Bundle) error {
	return l.publish(feds, false)
}

// publish builds the view from the CA's current snapshot and feds (the
// current ones with keep), and wakes the store. Publishes are serialized,
// so a later one never loses to an earlier one.
func (l *LocalSource) publish(feds map[spiffeid.TrustDomain]*spiffebundle.Bundle, keep bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if keep {
		feds = l.feds
	}
	snap := l.ca.Snapshot()
	b := &Bundles{Own: snap.Bundle, OwnX509DER: snap.X509DER, OwnJWKS: snap.JWKS,
		Federated: make(map[spiffeid.TrustDomain]*FederatedBundle, len(feds)), Set: spiffebundle.NewSet(snap.Bundle)}
	for td, fb := range feds {
		if td == snap.Bundle.TrustDomain() {
			return fmt.Errorf("federated bundle for the own trust domain %s", td)
		}
		der, jwks, err := encodeBundle(fb)
		if err != nil {
			return err
		}
		b.Federated[td] = &FederatedBundle{Bundle: fb, X509DER: der, JWKS: jwks}
		b.Set.Add(fb)
	}
	l.feds = feds
	l.bundles.Store(b)
	close(l.changed)
	l.changed = make(chan struct{})
	return nil
}

// CA returns the CA the source mints with.
func (l *LocalSource) CA() *ca.CA { return l.ca }

// TrustDomain implements Source.
func (l *LocalSource) TrustDomain() spiffeid.TrustDomain { return l.ca.TrustDomain() }

// MintX509SVID implements Source: the local CA signs a fresh key.
func (l *LocalSource) MintX509SVID(_ context.Context, e *policy.Entry) (*ca.X509SVID, error) {
	return l.ca.MintX509SVID(e.SPIFFEID, e.DNSNames, e.X509TTL)
}

// MintJWTSVID implements Source.
func (l *LocalSource) MintJWTSVID(_ context.Context, e *policy.Entry, audience []string) (*ca.JWT, error) {
	return l.ca.MintJWTSVID(e.SPIFFEID, audience, e.JWTTTL)
}

// Bundles implements Source.
func (l *LocalSource) Bundles() *Bundles { return l.bundles.Load() }

// BundlesChanged implements Source.
func (l *LocalSource) BundlesChanged() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed
}

// mintTimeout bounds one mint through the source (a server round trip).
const mintTimeout = 30 * time.Second
