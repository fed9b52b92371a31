package broker

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
)

// Status is the broker's state as `nodeward status` shows it: GET /v1/status
// on metrics_listen, and the "broker" member of the agent's /v1/status when
// the broker runs inside the agent. It holds no token or assertion.
type Status struct {
	SPIFFEID     string           `json:"spiffe_id"`
	Listen       []string         `json:"listen"`
	TokensCached int              `json:"tokens_cached"`
	Upstreams    []UpstreamStatus `json:"upstreams"`
}

// UpstreamStatus is one upstream IdP and its circuit breaker.
type UpstreamStatus struct {
	Name          string `json:"name"`
	Grant         string `json:"grant"`
	TokenEndpoint string `json:"token_endpoint"`
	// Breaker is "closed", "half-open" or "open".
	Breaker string `json:"breaker"`
}

// Status returns a snapshot of the broker's state.
func (b *Broker) Status() Status {
	id, _ := b.svids.id.Load().(string)
	st := Status{SPIFFEID: id, Listen: b.Addrs(), TokensCached: b.cache.Len(), Upstreams: []UpstreamStatus{}}
	if st.Listen == nil {
		st.Listen = []string{}
	}
	for _, u := range b.cfg.Upstreams {
		us := UpstreamStatus{Name: u.Name, Grant: u.Grant, TokenEndpoint: u.TokenEndpoint}
		if br := b.breakers[u.Name]; br != nil {
			us.Breaker = br.State()
		}
		st.Upstreams = append(st.Upstreams, us)
	}
	slices.SortFunc(st.Upstreams, func(x, y UpstreamStatus) int { return cmp.Compare(x.Name, y.Name) })
	return st
}

func (b *Broker) serveStatus(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(b.Status())
}

// Summary is a one-line state for systemd's STATUS= and logs.
func (b *Broker) Summary() string {
	open := 0
	for _, br := range b.breakers {
		if br.State() == "open" {
			open++
		}
	}
	return fmt.Sprintf("serving %d cached tokens, %d upstreams (%d breakers open)", b.cache.Len(), len(b.cfg.Upstreams), open)
}
