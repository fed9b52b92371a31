package agent

import (
	"cmp"
	"encoding/json"
	"net/http"
	"slices"
	"time"

	"github.com/nodeward/nodeward/agent/ca"
	"github.com/nodeward/nodeward/attestors/selector"
)

// Status is the agent's state as `nodeward status` shows it (GET /v1/status
// on the admin listener). It holds no key material.
type Status struct {
	TrustDomain string `json:"trust_domain"`
	// Mode is "standalone" (local CA and entries) or "server" (joined to
	// a SPIRE server, see Server).
	Mode string `json:"mode"`
	// Server is the SPIRE server's state (fleet mode only).
	Server *ServerStatus `json:"server,omitempty"`
	// Federation is the bundle endpoint and the federated trust domains
	// (standalone mode with a federation section).
	Federation *FederationStatus `json:"federation,omitempty"`
	Ready      bool              `json:"ready"`
	// Degraded says why the agent is not ready ("" when ready).
	Degraded   string           `json:"degraded,omitempty"`
	Uptime     string           `json:"uptime"`
	Socket     string           `json:"socket"`
	Entries    []EntryStatus    `json:"entries"`
	Identities []IdentityStatus `json:"identities"`
	Streams    map[string]int   `json:"open_streams"`
	JWTCache   int              `json:"jwt_svids_cached"`
	// StaleEntries counts entries not issued for guardrails.stale_after
	// (see GET /v1/inventory).
	StaleEntries int `json:"stale_entries"`
	// Node is the node's TPM attestation (nil without a tpm section).
	Node *NodeStatus `json:"node,omitempty"`
	// CA describes the CA's keys.
	CA CAStatus `json:"ca"`
	// Broker is the embedded token broker's status (see AttachStatus).
	Broker any `json:"broker,omitempty"`
}

// NodeStatus is the node as its TPM attests it.
type NodeStatus struct {
	// SPIFFEID is the agent's own identity, spiffe://<td>/nodeward/agent/tpm/<ek-hash>.
	SPIFFEID  string            `json:"spiffe_id"`
	Selectors []string          `json:"selectors"`
	PCRs      map[string]string `json:"pcrs,omitempty"`
	LastQuote *time.Time        `json:"last_quote,omitempty"`
}

// CAStatus says where the CA's root key lives and, for a TPM-held root,
// the software intermediate that mints SVIDs.
type CAStatus struct {
	Key                   string     `json:"key"` // file, tpm, or server (fleet mode: the server signs)
	IntermediateNotAfter  *time.Time `json:"intermediate_not_after,omitempty"`
	IntermediateRotatesAt *time.Time `json:"intermediate_rotates_at,omitempty"`
	// Authorities are the CA's keys: kind (x509, jwt), id, state
	// (prepared, active, retired, tainted) and expiry.
	Authorities []ca.AuthorityStatus `json:"authorities,omitempty"`
}

// AttachStatus adds the status of a component that runs inside the agent
// (the token broker) to the agent's /v1/status, as its "broker" member.
// The agent does not import the broker (dependency direction); it only
// calls f. Call it before Run.
func (a *Agent) AttachStatus(f func() any) { a.extraStatus = f }

// EntryStatus is one registration entry.
type EntryStatus struct {
	ID        string     `json:"id"`
	SPIFFEID  string     `json:"spiffe_id"`
	Selectors []string   `json:"selectors"`
	Hint      string     `json:"hint,omitempty"`
	Owner     string     `json:"owner,omitempty"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	Expired   bool       `json:"expired,omitempty"`
	Pos       string     `json:"configured_at,omitempty"`
}

// IdentityStatus is one X.509-SVID the agent holds.
type IdentityStatus struct {
	SPIFFEID  string    `json:"spiffe_id"`
	EntryID   string    `json:"entry_id"`
	Serial    string    `json:"serial"`
	ExpiresAt time.Time `json:"expires_at"`
	RotateAt  time.Time `json:"rotate_at"`
}

// Status returns a snapshot of the agent's state.
func (a *Agent) Status() Status {
	now := time.Now().Round(0)
	socket := a.config().SocketPath
	reason := a.NotReadyReason()
	st := Status{
		TrustDomain:  a.store.Source().TrustDomain().Name(),
		Mode:         "standalone",
		Ready:        reason == "",
		Degraded:     reason,
		Uptime:       now.Sub(a.started).Round(time.Second).String(),
		Socket:       socket,
		Entries:      []EntryStatus{},
		Identities:   []IdentityStatus{},
		Streams:      a.obs.openStreams(),
		JWTCache:     a.store.Stats().JWTSVIDs,
		StaleEntries: a.inv.StaleCount(),
	}
	if a.extraStatus != nil {
		st.Broker = a.extraStatus()
	}
	st.CA.Key = "file"
	if a.federation != nil {
		st.Federation = a.federation.status()
	}
	if a.fleet != nil {
		st.Mode, st.Server, st.CA.Key = "server", a.fleet.status(), "server"
		st.Server.GuardrailFindings = a.guard.findings()
	} else if in := a.ca.Intermediate(); in != nil {
		na, ra := in.NotAfter, a.ca.NextRotation()
		st.CA = CAStatus{Key: "tpm", IntermediateNotAfter: &na, IntermediateRotatesAt: &ra}
	}
	if a.ca != nil {
		st.CA.Authorities = a.ca.Authorities()
	}
	if n := a.node; n != nil {
		st.Node = &NodeStatus{SPIFFEID: n.id.String(), Selectors: selector.Strings(n.selectors()), PCRs: n.pcrValues(), LastQuote: n.last.Load()}
	}
	for _, e := range a.store.Index().Entries() {
		es := EntryStatus{ID: e.ID, SPIFFEID: e.SPIFFEID.String(), Selectors: selector.Strings(e.Selectors),
			Hint: e.Hint, Owner: e.Owner, Expired: e.Expired(now), Pos: e.Pos}
		if !e.ExpiresAt.IsZero() {
			t := e.ExpiresAt
			es.ExpiresAt = &t
		}
		st.Entries = append(st.Entries, es)
	}
	for _, sv := range a.store.X509Snapshot() {
		st.Identities = append(st.Identities, IdentityStatus{SPIFFEID: sv.Entry.SPIFFEID.String(), EntryID: sv.Entry.ID,
			Serial: sv.Serial, ExpiresAt: sv.SVID.Certificates[0].NotAfter, RotateAt: sv.RotateAt})
	}
	slices.SortFunc(st.Identities, func(x, y IdentityStatus) int { return cmp.Compare(x.SPIFFEID, y.SPIFFEID) })
	return st
}

func (a *Agent) serveStatus(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(a.Status())
}
