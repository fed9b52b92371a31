package spire

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nodeward/nodeward/agent/fleet"
)

var _ fleet.Client = (*Client)(nil)

// callTimeout bounds one server call.
const callTimeout = 30 * time.Second

// entryPage is the most entry ids asked for in one sync request (the
// server's page size).
const entryPage = 500

// entryMask is what a node agent needs of an entry (spire-agent's mask).
var entryMask = &types.EntryMask{SpiffeId: true, Selectors: true, FederatesWith: true, Admin: true,
	Downstream: true, RevisionNumber: true, StoreSvid: true, Hint: true, CreatedAt: true}

// call runs f on the mTLS connection; when the server says the node must
// attest again and it can, it attests and runs f once more. A call whose
// connection was replaced under it (a renewal or re-attestation closes
// the old one) runs again on the new one.
func (c *Client) call(ctx context.Context, what string, f func(ctx context.Context, conn *grpc.ClientConn) error) error {
	reattested := false
	for attempt := 0; ; attempt++ {
		conn, err := c.connection()
		if err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		err = f(cctx, conn)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() == nil && attempt < 3 && c.replaced(conn) {
			// The agent SVID was renewed or the node re-attested during
			// the call: its connection was closed under it ("the client
			// connection is closing", "transport is closing"), or the
			// server no longer takes the old SVID (AGENT_NOT_ACTIVE once
			// the new one was used). Run it again on the new connection.
			continue
		}
		err = c.mapErr(what, err)
		if !reattested && errors.Is(err, ErrMustReattest) && c.cfg.Attestor.Reattestable() {
			reattested = true
			c.log.Warn("the server asks this node to attest again", "err", err)
			if aerr := c.attest(ctx); aerr != nil {
				return fmt.Errorf("%w; re-attestation: %w", err, aerr)
			}
			continue
		}
		return err
	}
}

// replaced reports whether conn is no longer the client's connection.
func (c *Client) replaced(conn *grpc.ClientConn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn != nil && c.conn != conn
}

// SyncEntries implements fleet.Client: every entry the server authorizes
// for this node (SyncAuthorizedEntries, paged; GetAuthorizedEntries when
// the server lacks it).
func (c *Client) SyncEntries(ctx context.Context) ([]fleet.Entry, error) {
	var out []*types.Entry
	err := c.call(ctx, "sync entries", func(ctx context.Context, conn *grpc.ClientConn) error {
		var err error
		out, err = syncEntries(ctx, entryv1.NewEntryClient(conn))
		if status.Code(err) == codes.Unimplemented {
			resp, gerr := entryv1.NewEntryClient(conn).GetAuthorizedEntries(ctx, &entryv1.GetAuthorizedEntriesRequest{OutputMask: entryMask})
			if gerr != nil {
				return gerr
			}
			out, err = resp.GetEntries(), nil
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	entries := make([]fleet.Entry, 0, len(out))
	for _, e := range out {
		td := mustTD(e.GetSpiffeId().GetTrustDomain())
		id, err := spiffeid.FromPath(td, e.GetSpiffeId().GetPath())
		if err != nil || td.IsZero() || e.GetId() == "" {
			c.log.Warn("server entry with an invalid SPIFFE ID or no id; ignored", "entry", e.GetId())
			continue
		}
		fe := fleet.Entry{ID: e.GetId(), SPIFFEID: id, FederatesWith: e.GetFederatesWith(), Hint: e.GetHint(),
			RevisionNumber: e.GetRevisionNumber(), StoreSVID: e.GetStoreSvid()}
		for _, s := range e.GetSelectors() {
			fe.Selectors = append(fe.Selectors, s.GetType()+":"+s.GetValue())
		}
		entries = append(entries, fe)
	}
	return entries, nil
}

func mustTD(name string) spiffeid.TrustDomain {
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		return spiffeid.TrustDomain{}
	}
	return td
}

// syncEntries runs one SyncAuthorizedEntries exchange: the server answers
// with all entries at once, or with pages of revisions whose entries the
// client then asks for by id.
func syncEntries(ctx context.Context, ec entryv1.EntryClient) ([]*types.Entry, error) {
	stream, err := ec.SyncAuthorizedEntries(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&entryv1.SyncAuthorizedEntriesRequest{OutputMask: entryMask}); err != nil {
		return nil, sendErr(stream, err, new(entryv1.SyncAuthorizedEntriesResponse))
	}
	var (
		entries []*types.Entry
		ids     []string
	)
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			return entries, nil // all entries in one answer
		}
		if err != nil {
			return nil, err
		}
		entries = append(entries, resp.GetEntries()...)
		for _, r := range resp.GetEntryRevisions() {
			ids = append(ids, r.GetId())
		}
		if !resp.GetMore() {
			break
		}
	}
	sort.Strings(ids)
	for len(ids) > 0 {
		page := ids[:min(entryPage, len(ids))]
		ids = ids[len(page):]
		if err := stream.Send(&entryv1.SyncAuthorizedEntriesRequest{Ids: page}); err != nil {
			return nil, sendErr(stream, err, new(entryv1.SyncAuthorizedEntriesResponse))
		}
		for {
			resp, err := stream.Recv()
			if err != nil {
				return nil, err
			}
			entries = append(entries, resp.GetEntries()...)
			if !resp.GetMore() {
				break
			}
		}
	}
	_ = stream.CloseSend()
	return entries, nil
}

// sendErr turns a Send error into the stream's status: gRPC reports io.EOF
// from Send when the server already ended the stream (a refusal such as
// an evicted node's PermissionDenied), whose status Recv returns.
func sendErr(stream grpc.ClientStream, err error, reply any) error {
	if !errors.Is(err, io.EOF) {
		return err
	}
	if rerr := stream.RecvMsg(reply); rerr != nil && !errors.Is(rerr, io.EOF) {
		return rerr
	}
	return err
}

// NewX509SVID implements fleet.Client (BatchNewX509SVID with one CSR).
func (c *Client) NewX509SVID(ctx context.Context, entryID string, csr []byte) ([]*x509.Certificate, error) {
	var chain []*x509.Certificate
	err := c.call(ctx, "sign X.509-SVID", func(ctx context.Context, conn *grpc.ClientConn) error {
		resp, err := svidv1.NewSVIDClient(conn).BatchNewX509SVID(ctx, &svidv1.BatchNewX509SVIDRequest{
			Params: []*svidv1.NewX509SVIDParams{{EntryId: entryID, Csr: csr}}})
		if err != nil {
			return err
		}
		rs := resp.GetResults()
		if len(rs) != 1 {
			return fmt.Errorf("%d results for 1 CSR", len(rs))
		}
		if st := rs[0].GetStatus(); st.GetCode() != int32(codes.OK) {
			return fmt.Errorf("entry %s: %s: %s", entryID, codes.Code(st.GetCode()), st.GetMessage())
		}
		chain, err = parseChain(rs[0].GetSvid().GetCertChain())
		return err
	})
	return chain, err
}

// NewJWTSVID implements fleet.Client.
func (c *Client) NewJWTSVID(ctx context.Context, entryID string, audience []string) (string, time.Time, error) {
	var (
		tok string
		exp time.Time
	)
	err := c.call(ctx, "mint JWT-SVID", func(ctx context.Context, conn *grpc.ClientConn) error {
		resp, err := svidv1.NewSVIDClient(conn).NewJWTSVID(ctx, &svidv1.NewJWTSVIDRequest{EntryId: entryID, Audience: audience})
		if err != nil {
			return err
		}
		tok, exp = resp.GetSvid().GetToken(), time.Unix(resp.GetSvid().GetExpiresAt(), 0)
		if tok == "" {
			return errors.New("empty token")
		}
		return nil
	})
	return tok, exp, err
}

// serverBundle is a types.Bundle parsed.
type serverBundle struct{ fleet.Bundle }

func (b *serverBundle) x509() []*x509.Certificate {
	out := make([]*x509.Certificate, len(b.X509))
	for i, a := range b.X509 {
		out[i] = a.Cert
	}
	return out
}

func parseBundle(tb *types.Bundle) (*serverBundle, error) {
	td, err := spiffeid.TrustDomainFromString(tb.GetTrustDomain())
	if err != nil {
		return nil, fmt.Errorf("bundle trust domain: %w", err)
	}
	b := &serverBundle{fleet.Bundle{TrustDomain: td, Sequence: tb.GetSequenceNumber(),
		RefreshHint: time.Duration(tb.GetRefreshHint()) * time.Second}}
	for _, a := range tb.GetX509Authorities() {
		cert, err := x509.ParseCertificate(a.GetAsn1())
		if err != nil {
			return nil, fmt.Errorf("bundle of %s: X.509 authority: %w", td, err)
		}
		b.X509 = append(b.X509, fleet.Authority{Cert: cert, Tainted: a.GetTainted()})
	}
	for _, k := range tb.GetJwtAuthorities() {
		pub, err := x509.ParsePKIXPublicKey(k.GetPublicKey())
		if err != nil {
			return nil, fmt.Errorf("bundle of %s: JWT key %q: %w", td, k.GetKeyId(), err)
		}
		b.JWT = append(b.JWT, fleet.JWTKey{KeyID: k.GetKeyId(), PublicKey: pub, ExpiresAt: time.Unix(k.GetExpiresAt(), 0), Tainted: k.GetTainted()})
	}
	return b, nil
}

func fetchBundle(ctx context.Context, conn *grpc.ClientConn, td spiffeid.TrustDomain) (*serverBundle, error) {
	tb, err := bundlev1.NewBundleClient(conn).GetBundle(ctx, &bundlev1.GetBundleRequest{})
	if err != nil {
		return nil, err
	}
	b, err := parseBundle(tb)
	if err != nil {
		return nil, err
	}
	if b.TrustDomain != td {
		return nil, fmt.Errorf("the server's bundle is for %s, want %s", b.TrustDomain, td)
	}
	if len(b.X509) == 0 {
		return nil, errors.New("the server's bundle has no X.509 authority")
	}
	return b, nil
}

// Bundle implements fleet.Client. The bundle also becomes the trust the
// client authenticates the server with (the server's CA rotates), and is
// persisted.
func (c *Client) Bundle(ctx context.Context) (*fleet.Bundle, error) {
	var b *serverBundle
	err := c.call(ctx, "fetch bundle", func(ctx context.Context, conn *grpc.ClientConn) error {
		var err error
		b, err = fetchBundle(ctx, conn, c.cfg.TrustDomain)
		return err
	})
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	changed := !sameCerts(c.bundle, b.x509())
	c.bundle = b.x509()
	c.mu.Unlock()
	if changed {
		if err := c.persist(); err != nil {
			c.log.Warn("bundle not persisted", "err", err)
		}
	}
	return &b.Bundle, nil
}

func sameCerts(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

// FederatedBundle implements fleet.Client.
func (c *Client) FederatedBundle(ctx context.Context, td spiffeid.TrustDomain) (*fleet.Bundle, error) {
	var b *serverBundle
	err := c.call(ctx, "fetch federated bundle", func(ctx context.Context, conn *grpc.ClientConn) error {
		tb, err := bundlev1.NewBundleClient(conn).GetFederatedBundle(ctx, &bundlev1.GetFederatedBundleRequest{TrustDomain: td.Name()})
		if status.Code(err) == codes.NotFound {
			return fmt.Errorf("%s: %w", td, fleet.ErrNoBundle)
		}
		if err != nil {
			return err
		}
		b, err = parseBundle(tb)
		if err == nil && b.TrustDomain != td {
			err = fmt.Errorf("federated bundle is for %s, want %s", b.TrustDomain, td)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return &b.Bundle, nil
}
