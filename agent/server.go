package agent

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodeward/nodeward/agent/config"
	"github.com/nodeward/nodeward/agent/fleet"
	"github.com/nodeward/nodeward/agent/policy"
	"github.com/nodeward/nodeward/agent/spire"
	"github.com/nodeward/nodeward/attestors/tpm"
	"github.com/nodeward/nodeward/internal/audit"
)

// ServerClient is the agent side of a SPIRE server as fleet mode drives
// it: node attestation and the agent SVID's renewal (Start, Run), and what
// the identity source needs (fleet.Client).
type ServerClient interface {
	fleet.Client
	// Start attests the node, or loads the agent SVID persisted in
	// data_dir while it is valid, so a restart needs no new join token.
	Start(ctx context.Context) error
	// Run renews (or re-attests) the agent SVID before it expires, until
	// ctx is done; it returns an error when the server banned the node.
	Run(ctx context.Context) error
	// AgentSVID returns the node's SPIFFE ID and its SVID's expiry.
	AgentSVID() (spiffeid.ID, time.Time)
}

// DialServer builds the client of the server section: nodeward's SPIRE
// node-agent client (agent/spire). tp is the tpm section's TPM (nil
// without one): tpm_devid attestation proves the node with it.
var DialServer = dialSPIRE

// dialSPIRE builds the SPIRE client from the server section. Its state
// (agent SVID, key, bundle) lives in data_dir/spire.
func dialSPIRE(cfg *config.Agent, tp *tpm.TPM, log *slog.Logger) (ServerClient, error) {
	sc := cfg.Server
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, err
	}
	var bundle []*x509.Certificate
	if sc.TrustBundle != "" {
		data, err := os.ReadFile(sc.TrustBundle)
		if err != nil {
			return nil, fmt.Errorf("trust_bundle: %w", err)
		}
		for rest := data; ; {
			var b *pem.Block
			if b, rest = pem.Decode(rest); b == nil {
				break
			}
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("trust_bundle %s: %w", sc.TrustBundle, err)
			}
			bundle = append(bundle, c)
		}
		if len(bundle) == 0 {
			return nil, fmt.Errorf("trust_bundle %s: no PEM certificate (spire-server bundle show -format pem)", sc.TrustBundle)
		}
	}
	var att spire.NodeAttestor
	switch na := sc.NodeAttestation; {
	case na.JoinToken != "":
		att = spire.JoinToken(na.JoinToken)
	case na.X509PoP != nil:
		if att, err = spire.LoadX509PoP(na.X509PoP.Cert, na.X509PoP.Key); err != nil {
			return nil, err
		}
	case na.TPMDevID != nil:
		if tp == nil {
			return nil, errors.New("node_attestation: tpm_devid needs the tpm section's device")
		}
		if att, err = spire.LoadTPMDevID(tp, na.TPMDevID.Cert, na.TPMDevID.Pub, na.TPMDevID.Priv); err != nil {
			return nil, err
		}
	default:
		return nil, errors.New("node_attestation: none configured")
	}
	return spire.New(spire.Config{ServerAddr: sc.Address, TrustDomain: td, BootstrapBundle: bundle,
		InsecureBootstrap: sc.InsecureBootstrap, Dir: filepath.Join(cfg.DataDir, "spire"), Attestor: att,
		Logger: log.With("component", "spire")})
}

// serverGuardrails reports guardrail findings on the server's entries:
// each distinct finding is logged once (a sync repeats the same policy
// often), and the current count is in status.
type serverGuardrails struct {
	mu     sync.Mutex
	logged map[string]bool
	count  int
}

// maxLoggedFindings bounds the findings remembered as logged; past it the
// memory starts over (findings may then be logged again).
const maxLoggedFindings = 4096

func (g *serverGuardrails) report(log *slog.Logger, findings []policy.Finding) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.count = len(findings)
	if g.logged == nil || len(g.logged) > maxLoggedFindings {
		g.logged = make(map[string]bool)
	}
	for _, f := range findings {
		k := f.String()
		if g.logged[k] {
			continue
		}
		g.logged[k] = true
		log.Warn("policy (server entry; reported, not enforced): "+f.Code, "spiffe_id", f.SPIFFEID, "severity", f.Severity, "finding", f.Message)
	}
}

func (g *serverGuardrails) findings() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.count
}

// fleetMode is the agent's state in fleet mode.
type fleetMode struct {
	client ServerClient
	src    *fleet.Source
	addr   string
}

// ServerStatus is the server section of `nodeward status` (fleet mode).
type ServerStatus struct {
	Address          string     `json:"address"`
	AgentID          string     `json:"agent_spiffe_id,omitempty"`
	AgentExpiresAt   *time.Time `json:"agent_svid_expires_at,omitempty"`
	LastSync         *time.Time `json:"last_sync,omitempty"`
	UnreachableSince *time.Time `json:"unreachable_since,omitempty"`
	LastError        string     `json:"last_error,omitempty"`
	Entries          int        `json:"entries"`
	SkippedEntries   int        `json:"skipped_entries,omitempty"`
	// GuardrailFindings counts the guardrail findings on the server's
	// entries (reported in the log, not enforced).
	GuardrailFindings int    `json:"guardrail_findings,omitempty"`
	BundleSequence    uint64 `json:"bundle_sequence"`
}

// initialSyncTimeout bounds the first sync at start: past it the agent
// serves (nothing yet) and keeps syncing.
const initialSyncTimeout = 15 * time.Second

// newFleet starts the server client (attestation) and builds the source;
// the agent's store is not built yet: SetPolicy reaches it through a.
func (a *Agent) newFleet(ctx context.Context, cfg *config.Agent, td spiffeid.TrustDomain) (*fleetMode, error) {
	c, err := DialServer(cfg, a.tpm, a.log)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	if err := c.Start(ctx); err != nil {
		return nil, fmt.Errorf("server %s: %w", cfg.Server.Address, err)
	}
	id, exp := c.AgentSVID()
	a.log.Info("joined the SPIRE server", "server", cfg.Server.Address, "agent_id", id.String(), "agent_svid_expires", exp)
	src, err := fleet.New(fleet.Config{Client: c, TrustDomain: td, SyncInterval: time.Duration(cfg.Server.SyncInterval),
		SetPolicy: a.setServerPolicy, Logger: a.log, Observer: fleetObserver{a},
		Fatal: func(err error) bool { return errors.Is(err, spire.ErrAgentBanned) }})
	if err != nil {
		return nil, err
	}
	return &fleetMode{client: c, src: src, addr: cfg.Server.Address}, nil
}

// setServerPolicy applies a policy the server sent, as Reload applies a
// configured one. The server is the policy authority in this mode: the
// guardrails report on its entries (warnings) and never refuse them.
func (a *Agent) setServerPolicy(ix *policy.Index) {
	a.guard.report(a.log, policy.Check(ix.Entries(), CheckOptions(a.config(), time.Now())))
	a.unix.SetHashing(ix.Uses("unix", "sha256"))
	a.store.SetIndex(ix)
	a.inv.SyncPolicy(inventoryEntries(ix.Entries()))
	a.obs.record(audit.Record{Event: "sync", Decision: "allow", Reason: fmt.Sprintf("%d entries from the server", ix.Len())})
}

// registerFleetMetrics adds the server sync metrics (fleet mode only: in
// standalone mode there is no server to be unreachable).
func (a *Agent) registerFleetMetrics() {
	src := a.fleet.src
	a.metrics.Registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "nodeward_server_reachable",
			Help: "1 while the last sync with the SPIRE server succeeded, 0 while syncs fail (fleet mode)."},
			func() float64 {
				if st := src.Status(); st.UnreachableSince.IsZero() && !st.LastSync.IsZero() {
					return 1
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "nodeward_server_last_sync_timestamp_seconds",
			Help: "Unix time of the last successful sync with the SPIRE server (0: none yet)."},
			func() float64 {
				if t := src.Status().LastSync; !t.IsZero() {
					return float64(t.Unix())
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "nodeward_server_unreachable_since_timestamp_seconds",
			Help: "Unix time since which syncs with the SPIRE server fail (0: they work)."},
			func() float64 {
				if t := src.Status().UnreachableSince; !t.IsZero() {
					return float64(t.Unix())
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "nodeward_agent_svid_expiry_timestamp_seconds",
			Help: "Unix time at which the node's agent SVID (from the SPIRE server) expires."},
			func() float64 {
				_, exp := a.fleet.client.AgentSVID()
				return float64(exp.Unix())
			}),
		a.metrics.ServerSyncs,
	)
	for _, r := range []string{"ok", "error"} {
		a.metrics.ServerSyncs.WithLabelValues(r)
	}
}

// fleetObserver counts syncs.
type fleetObserver struct{ a *Agent }

func (o fleetObserver) Synced(err error) {
	if o.a.metrics == nil {
		return
	}
	r := "ok"
	if err != nil {
		r = "error"
	}
	o.a.metrics.ServerSyncs.WithLabelValues(r).Inc()
}

// run syncs and keeps the agent SVID fresh until ctx is done. A banned
// node stops issuing: the error ends the agent.
func (f *fleetMode) run(ctx context.Context) error {
	errc := make(chan error, 2)
	go func() { errc <- f.src.Run(ctx) }()
	go func() { errc <- f.client.Run(ctx) }()
	err := <-errc
	if err != nil {
		return fmt.Errorf("server %s: %w", f.addr, err)
	}
	return <-errc
}

// status reports the fleet mode's state.
func (f *fleetMode) status() *ServerStatus {
	s := f.src.Status()
	st := &ServerStatus{Address: f.addr, LastError: s.LastError, Entries: s.Entries, SkippedEntries: s.Skipped,
		BundleSequence: s.BundleSequence}
	id, exp := f.client.AgentSVID()
	if !id.IsZero() {
		st.AgentID = id.String()
		st.AgentExpiresAt = &exp
	}
	if !s.LastSync.IsZero() {
		st.LastSync = &s.LastSync
	}
	if !s.UnreachableSince.IsZero() {
		st.UnreachableSince = &s.UnreachableSince
	}
	return st
}

// reloadFleet applies a reloaded config in fleet mode: the entries come
// from the server, so only settings that apply at once change.
func (a *Agent) reloadFleet(cfg *config.Agent) error {
	if cfg.Server == nil {
		err := errors.New("the server section was removed: switching to standalone mode needs a restart")
		a.ReloadFailed(err)
		return err
	}
	a.mu.Lock()
	old := a.cfg
	a.cfg = cfg
	a.mu.Unlock()
	if cfg.TrustDomain != old.TrustDomain || cfg.SocketPath != old.SocketPath || cfg.DataDir != old.DataDir ||
		cfg.AdminListen != old.AdminListen || !reflect.DeepEqual(cfg.Server, old.Server) {
		a.log.Warn("reload: trust_domain, socket_path, data_dir, admin_listen and server changes need a restart; keeping the old values")
	}
	warnLimitsReload(a.log, old, cfg)
	a.inv.SetStaleAfter(time.Duration(cfg.Guardrails.StaleAfter))
	a.metrics.Reloads.WithLabelValues("ok").Inc()
	a.obs.record(audit.Record{Event: "reload", Decision: "allow", Reason: "fleet mode: entries come from the server"})
	a.log.Info("reloaded config (fleet mode: entries come from the server)")
	return nil
}
