package workloadapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/nodeward/nodeward/attestors/selector"
	"github.com/nodeward/nodeward/internal/audit"
	"github.com/nodeward/nodeward/internal/peercred"
)

// Request limits; larger input gets InvalidArgument.
const (
	MaxAudiences   = 32
	MaxAudienceLen = 1024
	MaxTokenLen    = 16 * 1024
	maxRecvMsgSize = 256 * 1024
	streamWorkers  = 8
)

const securityHeader = "workload.spiffe.io"

// Server is the SPIFFE Workload API gRPC service.
type Server struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	backend Backend
	log     *slog.Logger
	obs     Observer
	audit   *audit.Logger
	rec     IssueRecorder
	lim     *limiter
	tracer  trace.Tracer // nil: tracing off
}

// Config configures a Server.
type Config struct {
	Backend  Backend
	Logger   *slog.Logger
	Observer Observer      // nil: no measurements
	Audit    *audit.Logger // nil: no audit trail
	Recorder IssueRecorder // nil: issuance is not recorded per entry
	Limits   Limits        // zero: unlimited
	// Limited is told of each call refused by Limits (a Limited* reason).
	Limited func(reason string)
	// Tracer records a span per issuing or validating RPC, and per update
	// a stream sends (nil: tracing off).
	Tracer trace.Tracer
}

// New returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Backend == nil {
		return nil, errors.New("workloadapi: backend is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	return &Server{backend: cfg.Backend, log: cfg.Logger, obs: cfg.Observer, audit: cfg.Audit, rec: cfg.Recorder,
		lim: newLimiter(cfg.Limits, cfg.Limited), tracer: cfg.Tracer}, nil
}

type nopObserver struct{}

func (nopObserver) RPCDone(string, string, time.Duration) {}
func (nopObserver) StreamOpen(string, int)                {}
func (nopObserver) Issued(string, int)                    {}
func (nopObserver) Denied(string)                         {}

// GRPCServer returns a grpc.Server with the Workload API registered,
// peer-credential transport credentials and the security-header check.
func (s *Server) GRPCServer(opts ...grpc.ServerOption) *grpc.Server {
	opts = append([]grpc.ServerOption{
		grpc.Creds(peercred.TransportCredentials()),
		grpc.MaxRecvMsgSize(maxRecvMsgSize),
		// Reuse goroutines for RPCs: a fresh goroutine per RPC grows its
		// stack on every call (measured: ~7% of a FetchX509SVID's CPU).
		// Long-lived streams that hold a worker make gRPC spawn as before.
		grpc.NumStreamWorkers(streamWorkers),
		grpc.UnaryInterceptor(s.unaryInterceptor),
		grpc.StreamInterceptor(s.streamInterceptor),
	}, append(s.lim.serverOptions(), opts...)...)
	g := grpc.NewServer(opts...)
	workload.RegisterSpiffeWorkloadAPIServer(g, s)
	return g
}

// Serve serves the Workload API on l until ctx is done, then stops gracefully.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	g := s.GRPCServer()
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			g.Stop() // streams are long-lived: GracefulStop would wait for them forever
		case <-done:
		}
	}()
	err := g.Serve(l)
	close(done)
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("workload API: %w", err)
	}
	return nil
}

func checkHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(securityHeader); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	return nil
}

// rpcName turns "/SpiffeWorkloadAPI/FetchX509SVID" into "FetchX509SVID".
func rpcName(full string) string {
	for i := len(full) - 1; i >= 0; i-- {
		if full[i] == '/' {
			return full[i+1:]
		}
	}
	return full
}

func (s *Server) headerDenied(ctx context.Context, rpc string) error {
	err := checkHeader(ctx)
	if err != nil {
		s.obs.Denied("missing_header")
		rec := audit.Record{Event: "deny", Decision: "deny", Reason: "missing_header", RPC: rpc}
		if p, ok := peercred.FromContext(ctx); ok {
			rec.Caller = &audit.Caller{PID: p.PID, UID: p.UID, GID: p.GID}
		}
		s.auditLog(rec)
	}
	return err
}

func (s *Server) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	rpc := rpcName(info.FullMethod)
	resp, err := func() (any, error) {
		if err := s.headerDenied(ctx, rpc); err != nil {
			return nil, err
		}
		if err := s.lim.allowCost(ctx, callCost(req)); err != nil {
			return nil, err
		}
		return h(ctx, req)
	}()
	s.obs.RPCDone(rpc, status.Code(err).String(), time.Since(start))
	return resp, err
}

func (s *Server) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	start := time.Now()
	rpc := rpcName(info.FullMethod)
	err := s.headerDenied(ss.Context(), rpc)
	release := func() {}
	if err == nil {
		release, err = s.lim.openStream(ss.Context())
	}
	if err == nil {
		s.obs.StreamOpen(rpc, 1)
		err = h(srv, ss)
		s.obs.StreamOpen(rpc, -1)
	}
	release()
	s.obs.RPCDone(rpc, status.Code(err).String(), time.Since(start))
	return err
}

func (s *Server) auditLog(r audit.Record) {
	if err := s.audit.Log(r); err != nil {
		s.log.Error("audit log write failed", "err", err)
	}
}

// callerFor describes a caller for the audit trail from its peer
// credentials and selectors.
func callerFor(p *peercred.Info, sels []selector.Selector) *audit.Caller {
	c := &audit.Caller{PID: p.PID, UID: p.UID, GID: p.GID}
	for _, sel := range sels {
		switch sel.Type + ":" + sel.Key {
		case "unix:path":
			c.Binary = sel.Value
		case "cgroup:path":
			c.Cgroup = sel.Value
		case "systemd:unit":
			c.SystemdUnit = sel.Value
		case "container:id":
			c.ContainerID = sel.Value
		case "k8s:pod-uid":
			c.PodUID = sel.Value
		}
	}
	return c
}

// caller is an attested caller of one RPC.
type caller struct {
	sels  []selector.Selector
	audit *audit.Caller
}

// attest identifies the caller of ctx, failing closed.
func (s *Server) attest(ctx context.Context, rpc string) (*caller, error) {
	p, ok := peercred.FromContext(ctx)
	if !ok {
		s.obs.Denied("no_peer_credentials")
		return nil, status.Error(codes.Unauthenticated, "caller has no peer credentials")
	}
	sels, err := s.backend.Attest(ctx, p)
	if err != nil {
		reason := "attestation_failed"
		if errors.Is(err, ErrCallerChanged) || errors.Is(err, peercred.ErrExecChanged) {
			// An exec or fd hand-off after connect: worth an alert of its own.
			reason = "identity_changed"
		}
		s.obs.Denied(reason)
		s.log.Warn("attestation failed", "rpc", rpc, "pid", p.PID, "uid", p.UID, "reason", reason, "err", err)
		s.auditLog(audit.Record{Event: "deny", Decision: "deny", Reason: reason, RPC: rpc,
			Caller: &audit.Caller{PID: p.PID, UID: p.UID, GID: p.GID}})
		return nil, status.Error(codes.PermissionDenied, "caller could not be attested")
	}
	return &caller{sels: sels, audit: callerFor(p, sels)}, nil
}

// toStatus maps backend errors to gRPC status errors at the API edge, and
// records denials.
func (s *Server) toStatus(rpc string, c *caller, err error) error {
	reason := ""
	var st error
	switch {
	case errors.Is(err, ErrNoIdentity):
		reason, st = "no_identity", status.Error(codes.PermissionDenied, "no identity issued")
	case errors.Is(err, ErrNotEntitled):
		reason, st = "not_entitled", status.Error(codes.PermissionDenied, "not entitled to the requested SPIFFE ID")
	case errors.Is(err, ErrInvalidToken):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ErrUnavailable):
		s.log.Warn("workload API: no valid SVID can be issued", "rpc", rpc, "err", err)
		return status.Error(codes.Unavailable, "no valid SVID can be issued now; retry")
	default:
		s.log.Error("workload API request failed", "rpc", rpc, "err", err)
		return status.Error(codes.Internal, "internal error")
	}
	s.obs.Denied(reason)
	rec := audit.Record{Event: "deny", Decision: "deny", Reason: reason, RPC: rpc}
	if c != nil {
		rec.Caller = c.audit
	}
	s.auditLog(rec)
	return st
}

// FetchX509SVID streams the caller's X.509-SVIDs: the full state at once, and
// again whenever it changes.
func (s *Server) FetchX509SVID(_ *workload.X509SVIDRequest, stream workload.SpiffeWorkloadAPI_FetchX509SVIDServer) error {
	ctx := stream.Context()
	c, err := s.attest(ctx, "FetchX509SVID")
	if err != nil {
		return err
	}
	var last *workload.X509SVIDResponse
	sentSerial := map[string]string{} // SPIFFE ID -> serial last sent
	for {
		changed := s.backend.Changed()
		st, err := s.backend.X509(c.sels)
		if err == nil {
			err = checkLive(st.SVIDs)
		}
		if err != nil {
			return s.toStatus("FetchX509SVID", c, err)
		}
		resp, kept := x509Response(st)
		if last == nil || !sameX509(last, resp) {
			sp := s.startSpan(ctx, "FetchX509SVID", "x509")
			sp.caller(c)
			sp.set(attrUpdate.Bool(last != nil))
			for _, sv := range kept {
				sp.issued(sv.SPIFFEID, sv.EntryID)
			}
			if err := stream.Send(resp); err != nil {
				sp.end(err)
				return err
			}
			sp.end(nil)
			s.obs.Issued("x509", len(resp.Svids))
			for _, sv := range kept {
				if sentSerial[sv.SPIFFEID] == sv.Serial {
					continue
				}
				reason := ""
				if last != nil {
					reason = "update"
				}
				sentSerial[sv.SPIFFEID] = sv.Serial
				exp := sv.ExpiresAt
				s.auditLog(sp.stamp(audit.Record{Event: "issue", Decision: "allow", Reason: reason, Kind: "x509", RPC: "FetchX509SVID",
					SPIFFEID: sv.SPIFFEID, Serial: sv.Serial, ExpiresAt: &exp, EntryID: sv.EntryID, Caller: c.audit}))
				if s.rec != nil {
					s.rec.IssuedTo(sv.EntryID, "x509", c.audit)
				}
			}
			last = resp
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// checkLive is the last check before a send: an SVID past its expiry (by
// the wall clock) is never sent, whatever the backend handed over.
func checkLive(svids []X509SVID) error {
	now := time.Now().Round(0)
	for _, sv := range svids {
		if !now.Before(sv.ExpiresAt) {
			return fmt.Errorf("%w: X.509-SVID %s expired at %s", ErrUnavailable, sv.SPIFFEID, sv.ExpiresAt.UTC().Format(time.RFC3339))
		}
	}
	return nil
}

// x509Response builds the response and returns the SVIDs it holds.
func x509Response(st *X509State) (*workload.X509SVIDResponse, []X509SVID) {
	resp := &workload.X509SVIDResponse{
		Svids:            make([]*workload.X509SVID, 0, len(st.SVIDs)),
		FederatedBundles: st.Federated,
	}
	kept := make([]X509SVID, 0, len(st.SVIDs))
	hints := make(map[string]bool, len(st.SVIDs))
	for _, sv := range st.SVIDs {
		if sv.Hint != "" {
			// Hints must be unique per response: the first entry keeps it,
			// later ones with the same hint are left out.
			if hints[sv.Hint] {
				continue
			}
			hints[sv.Hint] = true
		}
		kept = append(kept, sv)
		resp.Svids = append(resp.Svids, &workload.X509SVID{
			SpiffeId:    sv.SPIFFEID,
			X509Svid:    sv.ChainDER,
			X509SvidKey: sv.KeyDER,
			Bundle:      st.BundleDER,
			Hint:        sv.Hint,
		})
	}
	return resp, kept
}

func sameX509(a, b *workload.X509SVIDResponse) bool {
	if len(a.Svids) != len(b.Svids) || len(a.FederatedBundles) != len(b.FederatedBundles) {
		return false
	}
	for i := range a.Svids {
		x, y := a.Svids[i], b.Svids[i]
		if x.SpiffeId != y.SpiffeId || x.Hint != y.Hint || !bytes.Equal(x.X509Svid, y.X509Svid) || !bytes.Equal(x.Bundle, y.Bundle) {
			return false
		}
	}
	for k, v := range a.FederatedBundles {
		if !bytes.Equal(v, b.FederatedBundles[k]) {
			return false
		}
	}
	return true
}

// FetchX509Bundles streams the X.509 bundles the caller may trust.
func (s *Server) FetchX509Bundles(_ *workload.X509BundlesRequest, stream workload.SpiffeWorkloadAPI_FetchX509BundlesServer) error {
	return s.streamBundles(stream.Context(), "FetchX509Bundles", s.backend.X509Bundles, func(b map[string][]byte) error {
		return stream.Send(&workload.X509BundlesResponse{Bundles: b})
	})
}

// FetchJWTBundles streams the JWT bundles (JWKS documents) the caller may trust.
func (s *Server) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream workload.SpiffeWorkloadAPI_FetchJWTBundlesServer) error {
	return s.streamBundles(stream.Context(), "FetchJWTBundles", s.backend.JWTBundles, func(b map[string][]byte) error {
		return stream.Send(&workload.JWTBundlesResponse{Bundles: b})
	})
}

// streamBundles attests the caller, sends its bundles at once, and again
// whenever they change, until the stream ends.
func (s *Server) streamBundles(ctx context.Context, rpc string, bundles func([]selector.Selector) (map[string][]byte, error), send func(map[string][]byte) error) error {
	c, err := s.attest(ctx, rpc)
	if err != nil {
		return err
	}
	var last map[string][]byte
	for {
		changed := s.backend.Changed()
		b, err := bundles(c.sels)
		if err != nil {
			return s.toStatus(rpc, c, err)
		}
		if last == nil || !sameBundles(last, b) {
			sp := s.startSpan(ctx, rpc, "bundle")
			sp.caller(c)
			sp.set(attrUpdate.Bool(last != nil))
			err := send(b)
			sp.end(err)
			if err != nil {
				return err
			}
			last = b
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

func sameBundles(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || !bytes.Equal(v, w) {
			return false
		}
	}
	return true
}

func checkAudience(aud []string) error {
	if len(aud) == 0 {
		return status.Error(codes.InvalidArgument, "audience must be specified")
	}
	if len(aud) > MaxAudiences {
		return status.Errorf(codes.InvalidArgument, "too many audiences: %d (at most %d)", len(aud), MaxAudiences)
	}
	for i, a := range aud {
		if a == "" {
			return status.Errorf(codes.InvalidArgument, "audience %d is empty", i)
		}
		if len(a) > MaxAudienceLen {
			return status.Errorf(codes.InvalidArgument, "audience %d is longer than %d bytes", i, MaxAudienceLen)
		}
	}
	return nil
}

// FetchJWTSVID returns JWT-SVIDs for the requested audience.
func (s *Server) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (_ *workload.JWTSVIDResponse, rerr error) {
	sp := s.startSpan(ctx, "FetchJWTSVID", "jwt")
	defer func() { sp.end(rerr) }()
	if err := checkAudience(req.Audience); err != nil {
		return nil, err
	}
	if req.SpiffeId != "" {
		if _, err := spiffeid.FromString(req.SpiffeId); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "invalid requested SPIFFE ID: %v", err)
		}
	}
	c, err := s.attest(ctx, "FetchJWTSVID")
	if err != nil {
		return nil, err
	}
	sp.caller(c)
	svids, err := s.backend.JWTSVIDs(c.sels, req.SpiffeId, req.Audience)
	if err == nil {
		now := time.Now().Round(0)
		for _, sv := range svids {
			if !now.Before(sv.ExpiresAt) {
				err = fmt.Errorf("%w: JWT-SVID for %s expired at %s", ErrUnavailable, sv.SPIFFEID, sv.ExpiresAt.UTC().Format(time.RFC3339))
				break
			}
		}
	}
	if err != nil {
		return nil, s.toStatus("FetchJWTSVID", c, err)
	}
	resp := &workload.JWTSVIDResponse{Svids: make([]*workload.JWTSVID, 0, len(svids))}
	hints := make(map[string]bool, len(svids))
	for _, sv := range svids {
		if sv.Hint != "" {
			if hints[sv.Hint] {
				continue
			}
			hints[sv.Hint] = true
		}
		resp.Svids = append(resp.Svids, &workload.JWTSVID{SpiffeId: sv.SPIFFEID, Svid: sv.Token, Hint: sv.Hint})
		sp.issued(sv.SPIFFEID, sv.EntryID)
		exp := sv.ExpiresAt
		s.auditLog(sp.stamp(audit.Record{Event: "issue", Decision: "allow", Kind: "jwt", RPC: "FetchJWTSVID", SPIFFEID: sv.SPIFFEID,
			Audience: req.Audience, JTI: sv.JTI, ExpiresAt: &exp, EntryID: sv.EntryID, Caller: c.audit}))
		if s.rec != nil {
			s.rec.IssuedTo(sv.EntryID, "jwt", c.audit)
		}
	}
	s.obs.Issued("jwt", len(resp.Svids))
	return resp, nil
}

// ValidateJWTSVID validates a JWT-SVID (signature, audience, expiry) against
// the bundle of its trust domain and returns its SPIFFE ID and claims.
func (s *Server) ValidateJWTSVID(ctx context.Context, req *workload.ValidateJWTSVIDRequest) (_ *workload.ValidateJWTSVIDResponse, rerr error) {
	sp := s.startSpan(ctx, "ValidateJWTSVID", "jwt")
	defer func() { sp.end(rerr) }()
	switch {
	case req.Audience == "":
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	case len(req.Audience) > MaxAudienceLen:
		return nil, status.Errorf(codes.InvalidArgument, "audience is longer than %d bytes", MaxAudienceLen)
	case req.Svid == "":
		return nil, status.Error(codes.InvalidArgument, "svid must be specified")
	case len(req.Svid) > MaxTokenLen:
		return nil, status.Errorf(codes.InvalidArgument, "svid is longer than %d bytes", MaxTokenLen)
	}
	c, err := s.attest(ctx, "ValidateJWTSVID")
	if err != nil {
		return nil, err
	}
	sp.caller(c)
	id, claims, err := s.backend.ValidateJWTSVID(req.Svid, req.Audience)
	if err != nil {
		// A word from a closed set: the validator's message quotes caller text.
		s.auditLog(sp.stamp(audit.Record{Event: "validate", Decision: "deny", Reason: validateReason(err), Kind: "jwt", RPC: "ValidateJWTSVID",
			Audience: []string{req.Audience}, Caller: c.audit}))
		return nil, s.toStatus("ValidateJWTSVID", c, err)
	}
	st, err := structpb.NewStruct(claims)
	if err != nil {
		return nil, s.toStatus("ValidateJWTSVID", c, fmt.Errorf("claims: %w", err))
	}
	jti, _ := claims["jti"].(string)
	sp.issued(id, "")
	s.auditLog(sp.stamp(audit.Record{Event: "validate", Decision: "allow", Kind: "jwt", RPC: "ValidateJWTSVID", SPIFFEID: id,
		Audience: []string{req.Audience}, JTI: jti, Caller: c.audit}))
	return &workload.ValidateJWTSVIDResponse{SpiffeId: id, Claims: st}, nil
}
