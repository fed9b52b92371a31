package agent

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodeward/nodeward/agent/identity"
	"github.com/nodeward/nodeward/agent/policy"
	"github.com/nodeward/nodeward/attestors/selector"
	"github.com/nodeward/nodeward/attestors/unix"
	"github.com/nodeward/nodeward/workloadapi"
	"github.com/nodeward/nodeward/workloadapi/peercred"
)

// backend adapts the identity store to the Workload API server.
type backend struct {
	a *Agent
}

var _ workloadapi.Backend = backend{}

// Attest runs the attestors for the peer, then re-checks that the process
// pinned by the pidfd at accept time is still alive: if it exited, its PID
// may have been reused while /proc was read, so nothing read can be trusted.
func (b backend) Attest(ctx context.Context, p *peercred.Info) (sels []selector.Selector, err error) {
	if m := b.a.metrics; m != nil {
		start := time.Now()
		defer func() {
			m.Attestation.Observe(time.Since(start).Seconds())
			if err != nil {
				m.AttestFailures.Inc()
			}
		}()
	}
	if err := p.CheckAlive(); err != nil {
		return nil, fmt.Errorf("attest pid %d: %w", p.PID, err)
	}
	sels, err = attestPID(ctx, b.a.attestors, p.PID, DefaultAttestTimeout, b.a.workers)
	if err != nil {
		return nil, fmt.Errorf("attest pid %d: %w", p.PID, err)
	}
	if err := p.CheckAlive(); err != nil {
		return nil, fmt.Errorf("attest pid %d: %w", p.PID, err)
	}
	if err := checkPeerUID(sels, p.UID); err != nil {
		return nil, fmt.Errorf("attest pid %d: %w", p.PID, err)
	}
	return sels, nil
}

// ErrUIDChanged: the process that opened the connection no longer runs
// under the effective uid it connected with.
var ErrUIDChanged = errors.New("effective uid changed since connect")

// checkPeerUID refuses a peer whose attested unix:uid differs from the uid
// SO_PEERCRED captured at connect. The connecting process may have handed
// the connection to another process and then exec'd a set-user-ID binary
// (or dropped privileges): /proc then describes someone other than who is
// talking, so nothing read from it may become an identity.
func checkPeerUID(sels []selector.Selector, uid uint32) error {
	want := strconv.FormatUint(uint64(uid), 10)
	for _, s := range sels {
		if s.Type == unix.Type && s.Key == "uid" && s.Value != want {
			return fmt.Errorf("%w: connected as uid %s, now uid %s", ErrUIDChanged, want, s.Value)
		}
	}
	return nil
}

func (b backend) match(sels []selector.Selector) ([]*policy.Entry, error) {
	if n := b.a.node; n != nil {
		// Node facts hold for every workload on the node; they are added at
		// match time (not attestation time) so that a new quote takes
		// effect on open streams at their next re-match.
		sels = append(sels[:len(sels):len(sels)], n.selectors()...)
	}
	entries, err := b.a.store.Match(sels)
	if err != nil {
		b.a.log.Info("denied: no matching entry", "selectors", len(sels))
		return nil, workloadapi.ErrNoIdentity
	}
	return entries, nil
}

func (b backend) tdID() string { return b.a.ca.TrustDomain().IDString() }

func (b backend) X509(sels []selector.Selector) (*workloadapi.X509State, error) {
	entries, err := b.match(sels)
	if err != nil {
		return nil, err
	}
	svids, err := b.a.store.X509SVIDs(entries)
	if err != nil {
		return nil, err
	}
	st := &workloadapi.X509State{
		SVIDs:      make([]workloadapi.X509SVID, len(svids)),
		BundleDER:  b.a.ca.X509BundleDER(),
		TrustDomID: b.tdID(),
	}
	for i, sv := range svids {
		st.SVIDs[i] = workloadapi.X509SVID{
			SPIFFEID: sv.Entry.SPIFFEID.String(),
			ChainDER: sv.ChainDER,
			KeyDER:   sv.SVID.KeyDER,
			Hint:     sv.Entry.Hint,

			EntryID:   sv.Entry.ID,
			Serial:    sv.Serial,
			ExpiresAt: sv.SVID.Certificates[0].NotAfter,
		}
	}
	return st, nil
}

func (b backend) X509Bundles(sels []selector.Selector) (map[string][]byte, error) {
	if _, err := b.match(sels); err != nil {
		return nil, err
	}
	return map[string][]byte{b.tdID(): b.a.ca.X509BundleDER()}, nil
}

func (b backend) JWTBundles(sels []selector.Selector) (map[string][]byte, error) {
	if _, err := b.match(sels); err != nil {
		return nil, err
	}
	return map[string][]byte{b.tdID(): b.a.ca.JWKS()}, nil
}

func (b backend) JWTSVIDs(sels []selector.Selector, id string, audience []string) ([]workloadapi.JWTSVID, error) {
	entries, err := b.match(sels)
	if err != nil {
		return nil, err
	}
	var want spiffeid.ID
	if id != "" {
		if want, err = spiffeid.FromString(id); err != nil {
			return nil, fmt.Errorf("requested SPIFFE ID: %w", err)
		}
	}
	svids, err := b.a.store.JWTSVIDs(entries, want, audience)
	switch {
	case errors.Is(err, identity.ErrNotEntitled):
		return nil, workloadapi.ErrNotEntitled
	case errors.Is(err, identity.ErrNoIdentity):
		return nil, workloadapi.ErrNoIdentity
	case err != nil:
		return nil, err
	}
	out := make([]workloadapi.JWTSVID, len(svids))
	for i, sv := range svids {
		out[i] = workloadapi.JWTSVID{SPIFFEID: sv.ID.String(), Token: sv.Token, Hint: sv.Hint,
			EntryID: sv.EntryID, JTI: sv.JTI, ExpiresAt: sv.ExpiresAt}
	}
	return out, nil
}

func (b backend) ValidateJWTSVID(token, audience string) (string, map[string]any, error) {
	svid, err := b.a.store.ValidateJWTSVID(token, audience)
	if err != nil {
		return "", nil, fmt.Errorf("%w: %v", workloadapi.ErrInvalidToken, err)
	}
	return svid.ID.String(), svid.Claims, nil
}

func (b backend) Changed() <-chan struct{} {
	ch, _ := b.a.store.Changed()
	return ch
}
