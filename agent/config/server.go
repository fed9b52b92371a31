package config

import (
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// DefaultSyncInterval is server.sync_interval when unset (what spire-agent does).
const DefaultSyncInterval = 5 * time.Second

// Server is the `server:` section: the agent joins a SPIRE server (fleet
// mode) instead of minting with its local CA from local entries.
type Server struct {
	// Address is the server's host:port.
	Address string
	// TrustBundle is the bootstrap bundle (PEM, `spire-server bundle
	// show`); InsecureBootstrap instead trusts the first server that
	// presents spiffe://<trust_domain>/spire/server (as spire-agent).
	TrustBundle       string
	InsecureBootstrap bool
	// SyncInterval is the entries and bundle poll interval (default 5s).
	SyncInterval Duration
	// NodeAttestation names exactly one node attestor.
	NodeAttestation NodeAttestation
}

// NodeAttestation is `server.node_attestation`: exactly one field is set.
type NodeAttestation struct {
	// JoinToken is a single-use SPIRE join token (a secret: never logged
	// or quoted in errors). `nodeward agent --join-token` overrides it.
	JoinToken string
	// X509PoP proves possession of a node key whose certificate the
	// server's x509pop attestor trusts.
	X509PoP *X509PoP
	// TPMDevID proves the node's TPM holds an LDevID key certified by the
	// server's DevID CA (the device comes from the tpm section).
	TPMDevID *TPMDevID
}

// X509PoP is `server.node_attestation.x509pop`.
type X509PoP struct {
	Cert string // PEM chain, leaf first
	Key  string // PEM private key (ECDSA or RSA)
}

// TPMDevID is `server.node_attestation.tpm_devid`.
type TPMDevID struct {
	Cert string // PEM DevID certificate chain
	Pub  string // TPMT_PUBLIC of the DevID key
	Priv string // TPM2B_PRIVATE contents of the DevID key (sealed to the TPM)
}

func (d decoder) absPath(v *yaml.Node, field string, dst *string) error {
	if err := d.str(v, field, dst); err != nil {
		return err
	}
	if !filepath.IsAbs(*dst) {
		return d.errf(v, field, "want an absolute file path, got %s", quote(*dst))
	}
	return nil
}

func (d decoder) server(v *yaml.Node, dst **Server) error {
	if v.Kind != yaml.MappingNode {
		return d.errf(v, "server", "want a mapping (address, trust_bundle, node_attestation), got %s", kindName(v))
	}
	s := &Server{SyncInterval: Duration(DefaultSyncInterval)}
	var naNode *yaml.Node
	err := d.fields(v, "server", map[string]func(v *yaml.Node) error{
		"address": func(v *yaml.Node) error {
			if err := d.str(v, "server.address", &s.Address); err != nil {
				return err
			}
			host, port, err := net.SplitHostPort(s.Address)
			if n, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
				return d.errf(v, "server.address", "want host:port such as spire-server.example.org:8081, got %s", quote(s.Address))
			}
			return nil
		},
		"trust_bundle": func(v *yaml.Node) error { return d.absPath(v, "server.trust_bundle", &s.TrustBundle) },
		"insecure_bootstrap": func(v *yaml.Node) error {
			return d.boolean(v, "server.insecure_bootstrap", &s.InsecureBootstrap)
		},
		"sync_interval": func(v *yaml.Node) error {
			if err := d.duration(v, "server.sync_interval", &s.SyncInterval); err != nil {
				return err
			}
			if s.SyncInterval < Duration(100*time.Millisecond) || s.SyncInterval > Duration(time.Hour) {
				return d.errf(v, "server.sync_interval", "want a duration from 100ms to 1h, got %s", time.Duration(s.SyncInterval))
			}
			return nil
		},
		"node_attestation": func(v *yaml.Node) error { naNode = v; return d.nodeAttestation(v, &s.NodeAttestation) },
	})
	if err != nil {
		return err
	}
	switch {
	case s.Address == "":
		return d.errf(v, "server.address", "missing: the SPIRE server's host:port")
	case s.TrustBundle == "" && !s.InsecureBootstrap:
		return d.errf(v, "server", "set trust_bundle (the server's bundle, PEM) or insecure_bootstrap: true")
	case s.TrustBundle != "" && s.InsecureBootstrap:
		return d.errf(v, "server", "trust_bundle and insecure_bootstrap exclude each other")
	case naNode == nil:
		return d.errf(v, "server.node_attestation", "missing: set one of join_token, x509pop, tpm_devid")
	}
	*dst = s
	return nil
}

func (d decoder) nodeAttestation(v *yaml.Node, na *NodeAttestation) error {
	if v.Kind != yaml.MappingNode {
		return d.errf(v, "server.node_attestation", "want a mapping with one of join_token, x509pop, tpm_devid, got %s", kindName(v))
	}
	n := 0
	err := d.fields(v, "server.node_attestation", map[string]func(v *yaml.Node) error{
		"join_token": func(v *yaml.Node) error {
			n++
			// The token is a secret: the error never quotes it.
			if v.Kind != yaml.ScalarNode || v.Tag != "!!str" || strings.TrimSpace(v.Value) != v.Value || v.Value == "" ||
				strings.ContainsAny(v.Value, " \t\r\n") || len(v.Value) > 256 {
				return d.errf(v, "server.node_attestation.join_token", "want the token as one word (value not shown)")
			}
			na.JoinToken = v.Value
			return nil
		},
		"x509pop": func(v *yaml.Node) error {
			n++
			p := &X509PoP{}
			if v.Kind != yaml.MappingNode {
				return d.errf(v, "server.node_attestation.x509pop", "want a mapping {cert, key}, got %s", kindName(v))
			}
			if err := d.fields(v, "server.node_attestation.x509pop", map[string]func(v *yaml.Node) error{
				"cert": func(v *yaml.Node) error { return d.absPath(v, "server.node_attestation.x509pop.cert", &p.Cert) },
				"key":  func(v *yaml.Node) error { return d.absPath(v, "server.node_attestation.x509pop.key", &p.Key) },
			}); err != nil {
				return err
			}
			if p.Cert == "" || p.Key == "" {
				return d.errf(v, "server.node_attestation.x509pop", "set both cert and key")
			}
			na.X509PoP = p
			return nil
		},
		"tpm_devid": func(v *yaml.Node) error {
			n++
			p := &TPMDevID{}
			if v.Kind != yaml.MappingNode {
				return d.errf(v, "server.node_attestation.tpm_devid", "want a mapping {cert, pub, priv}, got %s", kindName(v))
			}
			if err := d.fields(v, "server.node_attestation.tpm_devid", map[string]func(v *yaml.Node) error{
				"cert": func(v *yaml.Node) error { return d.absPath(v, "server.node_attestation.tpm_devid.cert", &p.Cert) },
				"pub":  func(v *yaml.Node) error { return d.absPath(v, "server.node_attestation.tpm_devid.pub", &p.Pub) },
				"priv": func(v *yaml.Node) error { return d.absPath(v, "server.node_attestation.tpm_devid.priv", &p.Priv) },
			}); err != nil {
				return err
			}
			if p.Cert == "" || p.Pub == "" || p.Priv == "" {
				return d.errf(v, "server.node_attestation.tpm_devid", "set cert, pub and priv")
			}
			na.TPMDevID = p
			return nil
		},
	})
	if err != nil {
		return err
	}
	if n != 1 {
		return d.errf(v, "server.node_attestation", "set exactly one of join_token, x509pop, tpm_devid (got %d)", n)
	}
	return nil
}
