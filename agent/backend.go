package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodeward/nodeward/agent/identity"
	"github.com/nodeward/nodeward/agent/policy"
	"github.com/nodeward/nodeward/attestors/selector"
	"github.com/nodeward/nodeward/attestors/unix"
	"github.com/nodeward/nodeward/internal/peercred"
	"github.com/nodeward/nodeward/workloadapi"
)

// backend adapts the identity store to the Workload API server.
type backend struct {
	a *Agent
}

var _ workloadapi.Backend = backend{}

// Attest runs the attestors for the peer, then re-checks that the process
// pinned by the pidfd at accept time is still alive: if it exited, its PID
// may have been reused while /proc was read, so nothing read can be trusted.
// It also refuses a peer that is no longer what connected: another binary
// (it has exec'd since), or other effective ids or groups.
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
	// Exec'd since accept, or while /proc was read: the selectors may
	// describe the new binary. Checked before CheckAlive, which proves the
	// PID still names the pinned process (so /proc/PID/exe was that
	// process's). One check, after attestation, costs one stat (~3 µs); a
	// process that exec'd another binary and then exec'd its original one
	// again while /proc was read is not caught (see docs/architecture.md).
	if err := p.CheckExec(); err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	if err := p.CheckAlive(); err != nil {
		return nil, fmt.Errorf("attest pid %d: %w", p.PID, err)
	}
	if err := checkPeerIDs(sels, p); err != nil {
		return nil, fmt.Errorf("attest pid %d: %w", p.PID, err)
	}
	return sels, nil
}

// ErrUIDChanged: the process that opened the connection no longer runs
// under the effective uid it connected with.
var ErrUIDChanged = fmt.Errorf("%w: effective uid changed", workloadapi.ErrCallerChanged)

// ErrGIDChanged: the process that opened the connection no longer runs
// under the effective gid or supplementary groups it connected with.
var ErrGIDChanged = fmt.Errorf("%w: effective gid or groups changed", workloadapi.ErrCallerChanged)

// checkPeerIDs refuses a peer whose attested unix:uid, unix:gid or
// unix:supplementary-gid set differs from what SO_PEERCRED and
// SO_PEERGROUPS captured at connect. The connecting process may have handed
// the connection to another process and then exec'd a set-user-ID or
// set-group-ID binary (or dropped privileges): /proc then describes someone
// other than who is talking, so nothing read from it may become an
// identity.
func checkPeerIDs(sels []selector.Selector, p *peercred.Info) error {
	uid := strconv.FormatUint(uint64(p.UID), 10)
	gid := strconv.FormatUint(uint64(p.GID), 10)
	groups := map[string]bool{}
	for _, s := range sels {
		if s.Type != unix.Type {
			continue
		}
		switch s.Key {
		case "uid":
			if s.Value != uid {
				return fmt.Errorf("%w: connected as uid %s, now uid %s", ErrUIDChanged, uid, s.Value)
			}
		case "gid":
			if s.Value != gid {
				return fmt.Errorf("%w: connected as gid %s, now gid %s", ErrGIDChanged, gid, s.Value)
			}
		case "supplementary-gid":
			if !p.GroupsKnown {
				continue
			}
			g, err := strconv.ParseUint(s.Value, 10, 32)
			if _, found := slices.BinarySearch(p.Groups, uint32(g)); err != nil || !found {
				return fmt.Errorf("%w: group %s was not a supplementary group at connect", ErrGIDChanged, s.Value)
			}
			groups[s.Value] = true
		}
	}
	if p.GroupsKnown && len(groups) != len(p.Groups) && hasUnixIDs(sels) {
		return fmt.Errorf("%w: %d supplementary groups at connect, %d now", ErrGIDChanged, len(p.Groups), len(groups))
	}
	return nil
}

// hasUnixIDs reports whether the unix attestor described the peer (the
// group comparison only means something then).
func hasUnixIDs(sels []selector.Selector) bool {
	for _, s := range sels {
		if s.Type == unix.Type && s.Key == "uid" {
			return true
		}
	}
	return false
}

func (b backend) match(sels []selector.Selector) ([]*policy.Entry, error) {
	if n := b.a.node; n != nil {
		// Node facts hold for every workload on the node; they are added at
		// match time (not attestation time) so that a new quote takes
		// effect on open streams at their next re-match.
		sels = append(sels[:len(sels):len(sels)], n.selectors()...)
	}
	entries, err := b.a.store.Match(sels)
	if err == nil && b.a.config().Guardrails.DisableStale {
		entries = b.a.enabled(entries)
	}
	if err == nil {
		entries = b.a.unsuspended(entries)
	}
	if err != nil || len(entries) == 0 {
		b.a.log.Info("denied: no matching entry", "selectors", len(sels))
		return nil, workloadapi.ErrNoIdentity
	}
	return entries, nil
}

func (b backend) tdID() string { return b.a.store.Source().TrustDomain().IDString() }

// federated returns the federated bundles the entries' workloads receive:
// those of every trust domain one of them federates with, when the source
// holds that bundle (a trust domain whose bundle is not known yet is left
// out; it is sent once it arrives).
func federated(bs *identity.Bundles, entries []*policy.Entry) map[string]*identity.FederatedBundle {
	var out map[string]*identity.FederatedBundle
	for _, e := range entries {
		for _, td := range e.FederatesWith {
			if f, ok := bs.Federated[td]; ok {
				if out == nil {
					out = make(map[string]*identity.FederatedBundle)
				}
				out[td.IDString()] = f
			}
		}
	}
	return out
}

func (b backend) X509(sels []selector.Selector) (*workloadapi.X509State, error) {
	entries, err := b.match(sels)
	if err != nil {
		return nil, err
	}
	svids, err := b.a.store.X509SVIDs(entries)
	if errors.Is(err, identity.ErrUnavailable) {
		return nil, fmt.Errorf("%w: %w", workloadapi.ErrUnavailable, err)
	}
	if err != nil {
		return nil, err
	}
	bs := b.a.store.Bundles()
	st := &workloadapi.X509State{
		SVIDs:      make([]workloadapi.X509SVID, len(svids)),
		BundleDER:  bs.OwnX509DER,
		TrustDomID: b.tdID(),
	}
	for td, f := range federated(bs, entries) {
		if st.Federated == nil {
			st.Federated = make(map[string][]byte)
		}
		st.Federated[td] = f.X509DER
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
	entries, err := b.match(sels)
	if err != nil {
		return nil, err
	}
	bs := b.a.store.Bundles()
	out := map[string][]byte{b.tdID(): bs.OwnX509DER}
	for td, f := range federated(bs, entries) {
		out[td] = f.X509DER
	}
	return out, nil
}

func (b backend) JWTBundles(sels []selector.Selector) (map[string][]byte, error) {
	entries, err := b.match(sels)
	if err != nil {
		return nil, err
	}
	bs := b.a.store.Bundles()
	out := map[string][]byte{b.tdID(): bs.OwnJWKS}
	for td, f := range federated(bs, entries) {
		out[td] = f.JWKS
	}
	return out, nil
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
