// Package spire is nodeward's client of a SPIRE server, as a node agent:
// node attestation (join_token, x509pop), the agent SVID (persisted,
// renewed or re-attested before it expires), and the calls a node agent
// makes: entries authorized for the node, workload X.509-SVIDs from CSRs,
// JWT-SVIDs, the trust bundle and federated bundles. It implements
// fleet.Client; package agent drives it.
//
// Security: attestation runs over TLS that authenticates the server as
// spiffe://<td>/spire/server against the bootstrap bundle (or, with
// insecure bootstrap, that ID alone, as spire-agent does); every other call
// is mTLS with the agent SVID against the server's current bundle. The
// agent SVID key is made here and kept 0600 in the persistence directory;
// a join token is never logged.
package spire

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// Errors a node can get from the server about itself.
var (
	// ErrAgentBanned: the operator banned the node (`spire-server agent
	// ban`); it must stop issuing.
	ErrAgentBanned = errors.New("the SPIRE server banned this node")
	// ErrMustReattest: the server no longer accepts the agent SVID
	// (expired, evicted, superseded); the node must attest again.
	ErrMustReattest = errors.New("the SPIRE server requires this node to attest again")
)

// Config configures a Client.
type Config struct {
	// ServerAddr is the server's host:port.
	ServerAddr  string
	TrustDomain spiffeid.TrustDomain
	// BootstrapBundle authenticates the server at the first attestation;
	// InsecureBootstrap checks only its SPIFFE ID instead.
	BootstrapBundle   []*x509.Certificate
	InsecureBootstrap bool
	// Dir holds the agent SVID, its key and the bundle (created 0700).
	Dir      string
	Attestor NodeAttestor
	Logger   *slog.Logger
	// Clock is the wall clock; nil: time.Now without its monotonic reading.
	Clock func() time.Time
}

// agentSVID is the node's own identity.
type agentSVID struct {
	id           spiffeid.ID
	chain        []*x509.Certificate
	key          *ecdsa.PrivateKey
	reattestable bool
}

// Client talks to one SPIRE server as one node. It is safe for concurrent
// use.
type Client struct {
	cfg      Config
	log      *slog.Logger
	serverID spiffeid.ID

	mu     sync.Mutex
	svid   *agentSVID
	bundle []*x509.Certificate // the server's trust bundle (X.509 authorities)
	conn   *grpc.ClientConn    // mTLS with svid; replaced when svid changes
	banned bool
}

// New returns a client; Start attests (or loads the persisted SVID).
func New(cfg Config) (*Client, error) {
	if cfg.ServerAddr == "" || cfg.TrustDomain.IsZero() || cfg.Dir == "" || cfg.Attestor == nil {
		return nil, errors.New("spire: server address, trust domain, directory and attestor are required")
	}
	if len(cfg.BootstrapBundle) == 0 && !cfg.InsecureBootstrap {
		return nil, errors.New("spire: a bootstrap bundle or insecure bootstrap is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = func() time.Time { return time.Now().Round(0) }
	}
	serverID, err := spiffeid.FromSegments(cfg.TrustDomain, "spire", "server")
	if err != nil {
		return nil, err
	}
	return &Client{cfg: cfg, log: cfg.Logger, serverID: serverID}, nil
}

// AgentSVID returns the node's SPIFFE ID and its SVID's expiry (zero
// before Start).
func (c *Client) AgentSVID() (spiffeid.ID, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.svid == nil {
		return spiffeid.ID{}, time.Time{}
	}
	return c.svid.id, c.svid.chain[0].NotAfter
}

// Start loads the persisted agent SVID when it is still valid for this
// server and trust domain, else attests. A node restarted with a valid
// SVID needs neither the server nor a new join token to start.
func (c *Client) Start(ctx context.Context) error {
	st, err := load(c.cfg.Dir, c.cfg.TrustDomain, c.cfg.Clock())
	if err != nil {
		c.log.Warn("persisted agent SVID not used; attesting", "err", err)
	}
	if st != nil {
		c.mu.Lock()
		c.svid, c.bundle = st.svid, st.bundle
		c.mu.Unlock()
		if err := c.dial(); err != nil {
			return err
		}
		c.log.Info("agent SVID loaded", "agent_id", st.svid.id.String(), "expires", st.svid.chain[0].NotAfter)
		return nil
	}
	return c.attest(ctx)
}

// bootstrapTLS is the TLS config of attestation: the server authenticated
// by its SPIFFE ID, against the known bundle (or, insecure, by the ID alone).
func (c *Client) bootstrapTLS() *tls.Config {
	c.mu.Lock()
	bundle := c.bundle
	c.mu.Unlock()
	if len(bundle) == 0 {
		bundle = c.cfg.BootstrapBundle
	}
	if len(bundle) == 0 && c.cfg.InsecureBootstrap {
		want := c.serverID.String()
		return &tls.Config{
			MinVersion: tls.VersionTLS12,
			// #nosec G402 -- insecure_bootstrap, as spire-agent: the chain
			// is not verified, the server's SPIFFE ID is.
			InsecureSkipVerify: true,
			VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
				if len(raw) == 0 {
					return errors.New("the server sent no certificate")
				}
				leaf, err := x509.ParseCertificate(raw[0])
				if err != nil {
					return err
				}
				if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
					return fmt.Errorf("the server's certificate is not %s", want)
				}
				return nil
			},
		}
	}
	return tlsconfig.TLSClientConfig(x509bundle.FromX509Authorities(c.cfg.TrustDomain, bundle), tlsconfig.AuthorizeID(c.serverID))
}

// GetX509SVID implements x509svid.Source for the mTLS connection.
func (c *Client) GetX509SVID() (*x509svid.SVID, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.svid == nil {
		return nil, errors.New("no agent SVID")
	}
	return &x509svid.SVID{ID: c.svid.id, Certificates: c.svid.chain, PrivateKey: c.svid.key}, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (c *Client) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != c.cfg.TrustDomain {
		return nil, fmt.Errorf("no bundle for trust domain %s", td)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return x509bundle.FromX509Authorities(td, c.bundle), nil
}

// dial (re)creates the mTLS connection for the current SVID; the old one
// is closed (the server stops accepting an old serial once a renewed one
// was used).
func (c *Client) dial() error {
	tc := tlsconfig.MTLSClientConfig(c, c, tlsconfig.AuthorizeID(c.serverID))
	conn, err := grpc.NewClient(c.cfg.ServerAddr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", c.cfg.ServerAddr, err)
	}
	c.mu.Lock()
	old := c.conn
	c.conn = conn
	c.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	return nil
}

// Close closes the connection to the server.
func (c *Client) Close() error {
	c.mu.Lock()
	conn := c.conn
	c.conn = nil
	c.mu.Unlock()
	if conn != nil {
		return conn.Close()
	}
	return nil
}

// connection returns the mTLS connection, or an error when banned.
func (c *Client) connection() (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.banned {
		return nil, ErrAgentBanned
	}
	if c.conn == nil {
		return nil, errors.New("not started")
	}
	return c.conn, nil
}

// newKeyAndCSR makes a P-256 key and a CSR for it (the server takes only
// the public key).
func newKeyAndCSR() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, err
	}
	return key, csr, nil
}

// attest runs node attestation, then fetches the bundle and persists both.
func (c *Client) attest(ctx context.Context) error {
	key, csr, err := newKeyAndCSR()
	if err != nil {
		return fmt.Errorf("agent key: %w", err)
	}
	conn, err := grpc.NewClient(c.cfg.ServerAddr, grpc.WithTransportCredentials(credentials.NewTLS(c.bootstrapTLS())))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", c.cfg.ServerAddr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	stream, err := agentv1.NewAgentClient(conn).AttestAgent(ctx)
	if err != nil {
		return c.mapErr("attest", err)
	}
	payload, err := c.cfg.Attestor.Payload(ctx)
	if err != nil {
		return fmt.Errorf("attest (%s): %w", c.cfg.Attestor.Type(), err)
	}
	if err := stream.Send(&agentv1.AttestAgentRequest{Step: &agentv1.AttestAgentRequest_Params_{Params: &agentv1.AttestAgentRequest_Params{
		Data:   &types.AttestationData{Type: c.cfg.Attestor.Type(), Payload: payload},
		Params: &agentv1.AgentX509SVIDParams{Csr: csr},
	}}}); err != nil {
		return c.mapErr("attest", sendErr(stream, err, new(agentv1.AttestAgentResponse)))
	}
	var result *agentv1.AttestAgentResponse_Result
	for result == nil {
		resp, err := stream.Recv()
		if err != nil {
			return c.mapErr("attest ("+c.cfg.Attestor.Type()+")", err)
		}
		if ch := resp.GetChallenge(); ch != nil {
			ans, err := c.cfg.Attestor.Answer(ctx, ch)
			if err != nil {
				return fmt.Errorf("attest (%s): %w", c.cfg.Attestor.Type(), err)
			}
			if err := stream.Send(&agentv1.AttestAgentRequest{Step: &agentv1.AttestAgentRequest_ChallengeResponse{ChallengeResponse: ans}}); err != nil {
				return c.mapErr("attest", sendErr(stream, err, new(agentv1.AttestAgentResponse)))
			}
			continue
		}
		result = resp.GetResult()
		if result == nil {
			return errors.New("attest: the server answered neither a challenge nor a result")
		}
	}
	_ = stream.CloseSend()
	sv, err := c.checkSVID(result.GetSvid(), key)
	if err != nil {
		return fmt.Errorf("attest: %w", err)
	}
	sv.reattestable = result.GetReattestable()
	bundle, err := fetchBundle(ctx, conn, c.cfg.TrustDomain)
	if err != nil {
		return c.mapErr("attest: fetch bundle", err)
	}
	c.mu.Lock()
	c.svid, c.bundle, c.banned = sv, bundle.x509(), false
	c.mu.Unlock()
	if err := c.persist(); err != nil {
		return err
	}
	c.log.Info("node attested", "attestor", c.cfg.Attestor.Type(), "agent_id", sv.id.String(), "expires", sv.chain[0].NotAfter)
	return c.dial()
}

// checkSVID parses an agent SVID and checks that it certifies key and
// names an agent of this trust domain.
func (c *Client) checkSVID(s *types.X509SVID, key *ecdsa.PrivateKey) (*agentSVID, error) {
	chain, err := parseChain(s.GetCertChain())
	if err != nil {
		return nil, err
	}
	leaf := chain[0]
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return nil, errors.New("the agent SVID does not certify the key of the CSR")
	}
	if len(leaf.URIs) != 1 {
		return nil, errors.New("the agent SVID has no single URI SAN")
	}
	id, err := spiffeid.FromURI(leaf.URIs[0])
	if err != nil || id.TrustDomain() != c.cfg.TrustDomain {
		return nil, fmt.Errorf("the agent SVID names %v, not an ID in %s", leaf.URIs[0], c.cfg.TrustDomain)
	}
	if !c.cfg.Clock().Before(leaf.NotAfter) {
		return nil, errors.New("the agent SVID is expired")
	}
	return &agentSVID{id: id, chain: chain, key: key}, nil
}

func parseChain(ders [][]byte) ([]*x509.Certificate, error) {
	if len(ders) == 0 {
		return nil, errors.New("empty certificate chain")
	}
	chain := make([]*x509.Certificate, len(ders))
	for i, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", i, err)
		}
		chain[i] = c
	}
	return chain, nil
}

// renewAt is the jittered moment to renew sv: half its life ±10 %.
func renewAt(sv *agentSVID) time.Time {
	leaf := sv.chain[0]
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	return leaf.NotBefore.Add(time.Duration(float64(life) * (0.45 + 0.1*mrand.Float64())))
}

// Run keeps the agent SVID fresh until ctx is done: renewed (join_token)
// or re-attested (x509pop) at half its life, retried with a capped,
// jittered backoff. It returns ErrAgentBanned when the server banned the
// node.
func (c *Client) Run(ctx context.Context) error {
	failures := 0
	for {
		c.mu.Lock()
		sv := c.svid
		c.mu.Unlock()
		wait := time.Until(renewAt(sv))
		if failures > 0 {
			wait = min(time.Duration(1<<min(failures, 6))*time.Second, time.Minute)
			wait = wait/2 + time.Duration(mrand.Int64N(int64(wait/2)+1))
		}
		// Wake at least every 30 s: timers stop while the machine sleeps.
		t := time.NewTimer(min(max(wait, 0), 30*time.Second))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		if failures == 0 && c.cfg.Clock().Before(renewAt(sv)) {
			continue
		}
		err := c.Rotate(ctx)
		switch {
		case err == nil:
			failures = 0
		case errors.Is(err, ErrAgentBanned):
			return err
		case ctx.Err() != nil:
			return nil
		default:
			failures++
			c.log.Warn("agent SVID renewal failed; retrying", "err", err, "failures", failures)
		}
	}
}

// Rotate replaces the agent SVID now: RenewAgent, or a new attestation
// when the node can re-attest (or the server requires it).
func (c *Client) Rotate(ctx context.Context) error {
	c.mu.Lock()
	sv := c.svid
	c.mu.Unlock()
	if sv.reattestable {
		return c.attest(ctx)
	}
	err := c.renew(ctx)
	if errors.Is(err, ErrMustReattest) && c.cfg.Attestor.Reattestable() {
		return c.attest(ctx)
	}
	return err
}

func (c *Client) renew(ctx context.Context) error {
	conn, err := c.connection()
	if err != nil {
		return err
	}
	key, csr, err := newKeyAndCSR()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := agentv1.NewAgentClient(conn).RenewAgent(ctx, &agentv1.RenewAgentRequest{Params: &agentv1.AgentX509SVIDParams{Csr: csr}})
	if err != nil {
		return c.mapErr("renew agent SVID", err)
	}
	sv, err := c.checkSVID(resp.GetSvid(), key)
	if err != nil {
		return fmt.Errorf("renew agent SVID: %w", err)
	}
	c.mu.Lock()
	c.svid = sv
	c.mu.Unlock()
	if err := c.persist(); err != nil {
		return err
	}
	c.log.Info("agent SVID renewed", "agent_id", sv.id.String(), "expires", sv.chain[0].NotAfter)
	return c.dial()
}

// mapErr wraps a server error, mapping the node-state reasons to
// ErrAgentBanned and ErrMustReattest; a ban sticks.
func (c *Client) mapErr(what string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %w", what, err)
	}
	if st.Code() == codes.PermissionDenied {
		for _, d := range st.Details() {
			pd, ok := d.(*types.PermissionDeniedDetails)
			if !ok {
				continue
			}
			switch pd.GetReason() {
			case types.PermissionDeniedDetails_AGENT_BANNED:
				c.mu.Lock()
				c.banned = true
				c.mu.Unlock()
				return fmt.Errorf("%s: %w", what, ErrAgentBanned)
			case types.PermissionDeniedDetails_AGENT_EXPIRED, types.PermissionDeniedDetails_AGENT_NOT_ATTESTED,
				types.PermissionDeniedDetails_AGENT_NOT_ACTIVE, types.PermissionDeniedDetails_AGENT_MUST_REATTEST:
				return fmt.Errorf("%s: %w (%s)", what, ErrMustReattest, pd.GetReason())
			}
		}
	}
	if st.Code() == codes.Unavailable && strings.Contains(st.Message(), "authentication handshake failed") {
		// The TLS layer's words say what failed, not what to check.
		return fmt.Errorf("%s: %s: %s (the server did not prove it is %s with trust_bundle: is trust_bundle this server's bundle, and trust_domain its trust domain?)",
			what, st.Code(), st.Message(), c.serverID)
	}
	return fmt.Errorf("%s: %s: %s", what, st.Code(), st.Message())
}
