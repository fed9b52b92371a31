package spire

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodeward/nodeward/internal/atomicfile"
	"github.com/nodeward/nodeward/internal/safefs"
)

// StateFile is the file in Dir holding the agent SVID, its key and the
// server's bundle: one file, written atomically (0600), so the SVID and its
// key are always stored together.
const StateFile = "spire-agent.json"

// maxState bounds the state file.
const maxState = 1 << 20

type stateJSON struct {
	SVID         [][]byte `json:"svid_chain"`
	Key          []byte   `json:"key_pkcs8"`
	Bundle       [][]byte `json:"bundle"`
	Reattestable bool     `json:"reattestable"`
}

type state struct {
	svid   *agentSVID
	bundle []*x509.Certificate
}

// persist writes the current SVID, key and bundle.
func (c *Client) persist() error {
	c.mu.Lock()
	sv, bundle := c.svid, c.bundle
	c.mu.Unlock()
	if sv == nil {
		return nil
	}
	key, err := x509.MarshalPKCS8PrivateKey(sv.key)
	if err != nil {
		return fmt.Errorf("persist agent key: %w", err)
	}
	st := stateJSON{Key: key, Reattestable: sv.reattestable}
	for _, cert := range sv.chain {
		st.SVID = append(st.SVID, cert.Raw)
	}
	for _, cert := range bundle {
		st.Bundle = append(st.Bundle, cert.Raw)
	}
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.cfg.Dir, 0o700); err != nil {
		return fmt.Errorf("persist agent SVID: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(c.cfg.Dir, StateFile), data, 0o600); err != nil {
		return fmt.Errorf("persist agent SVID: %w", err)
	}
	return nil
}

// load reads the persisted state; nil, nil when there is none. A state
// that is unsafe (a symlink, another owner, readable by others), corrupt,
// for another trust domain or expired is refused with the reason.
func load(dir string, td spiffeid.TrustDomain, now time.Time) (*state, error) {
	path := filepath.Join(dir, StateFile)
	f, err := safefs.OpenFile(path, true)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("agent state %s: %w", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxState+1))
	if err != nil || len(data) > maxState {
		return nil, fmt.Errorf("agent state %s: unreadable or too large", path)
	}
	var st stateJSON
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("agent state %s: %w", path, err)
	}
	chain, err := parseChain(st.SVID)
	if err != nil {
		return nil, fmt.Errorf("agent state %s: SVID: %w", path, err)
	}
	k, err := x509.ParsePKCS8PrivateKey(st.Key)
	if err != nil {
		return nil, fmt.Errorf("agent state %s: key: %w", path, err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if pub, isEC := chain[0].PublicKey.(*ecdsa.PublicKey); !ok || !isEC || !pub.Equal(&key.PublicKey) {
		return nil, fmt.Errorf("agent state %s: the key does not match the SVID", path)
	}
	bundle, err := parseChain(st.Bundle)
	if err != nil {
		return nil, fmt.Errorf("agent state %s: bundle: %w", path, err)
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 {
		return nil, fmt.Errorf("agent state %s: the SVID has no single URI SAN", path)
	}
	id, err := spiffeid.FromURI(leaf.URIs[0])
	if err != nil || id.TrustDomain() != td {
		return nil, fmt.Errorf("agent state %s: the SVID is not for trust domain %s", path, td)
	}
	// Keep a margin: an SVID about to expire cannot be renewed in time.
	if !now.Add(30 * time.Second).Before(leaf.NotAfter) {
		return nil, fmt.Errorf("agent state %s: the SVID expired at %s", path, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return &state{svid: &agentSVID{id: id, chain: chain, key: key, reattestable: st.Reattestable}, bundle: bundle}, nil
}
