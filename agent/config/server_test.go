package config

import (
	"strings"
	"testing"
	"time"
)

const serverOK = "trust_domain: example.org\nserver:\n  address: spire.example.org:8081\n  trust_bundle: /etc/nodeward/spire-bundle.pem\n  node_attestation:\n    join_token: 3f1c0a\n"

func TestServerSection(t *testing.T) {
	cfg, err := Parse("agent.yaml", []byte(serverOK))
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Server
	if s == nil || s.Address != "spire.example.org:8081" || s.TrustBundle != "/etc/nodeward/spire-bundle.pem" ||
		s.NodeAttestation.JoinToken != "3f1c0a" || time.Duration(s.SyncInterval) != DefaultSyncInterval {
		t.Fatalf("server = %+v", s)
	}
	cfg, err = Parse("agent.yaml", []byte("trust_domain: example.org\ntpm:\n  address: tcp://127.0.0.1:2321\nserver:\n  address: 10.0.0.1:8081\n  insecure_bootstrap: true\n  sync_interval: 1s\n"+
		"  node_attestation:\n    tpm_devid: {cert: /c.pem, pub: /d.pub, priv: /d.priv}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if d := cfg.Server.NodeAttestation.TPMDevID; d == nil || d.Priv != "/d.priv" || !cfg.Server.InsecureBootstrap || time.Duration(cfg.Server.SyncInterval) != time.Second {
		t.Fatalf("server = %+v", cfg.Server)
	}
	if _, err := Parse("agent.yaml", []byte(strings.Replace(serverOK, "join_token: 3f1c0a", "x509pop: {cert: /n.crt, key: /n.key}", 1))); err != nil {
		t.Fatal(err)
	}
}

func TestServerSectionErrors(t *testing.T) {
	tests := []struct{ name, yaml, want string }{
		{"entries too", serverOK + "entries:\n  - spiffe_id: spiffe://example.org/a\n    selectors: [unix:uid:1]\n",
			"agent.yaml:8: entries: not used with a server section: the SPIRE server holds the entries and signs the SVIDs (remove one of them)"},
		{"ca too", serverOK + "ca:\n  key: file\n",
			"agent.yaml:8: ca: not used with a server section"},
		{"no attestor", "server:\n  address: a:1\n  trust_bundle: /b.pem\n",
			"agent.yaml:2: server.node_attestation: missing: set one of join_token, x509pop, tpm_devid"},
		{"two attestors", "server:\n  address: a:1\n  trust_bundle: /b.pem\n  node_attestation:\n    join_token: x\n    x509pop: {cert: /a, key: /b}\n",
			"agent.yaml:5: server.node_attestation: set exactly one of join_token, x509pop, tpm_devid (got 2)"},
		{"no bundle", "server:\n  address: a:1\n  node_attestation: {join_token: x}\n",
			"agent.yaml:2: server: set trust_bundle (the server's bundle, PEM) or insecure_bootstrap: true"},
		{"both bundles", "server:\n  address: a:1\n  trust_bundle: /b.pem\n  insecure_bootstrap: true\n  node_attestation: {join_token: x}\n",
			"agent.yaml:2: server: trust_bundle and insecure_bootstrap exclude each other"},
		{"bad address", "server:\n  address: spire\n  trust_bundle: /b.pem\n  node_attestation: {join_token: x}\n",
			`agent.yaml:2: server.address: want host:port such as spire-server.example.org:8081, got "spire"`},
		{"relative bundle", "server:\n  address: a:1\n  trust_bundle: b.pem\n  node_attestation: {join_token: x}\n",
			`agent.yaml:3: server.trust_bundle: want an absolute file path, got "b.pem"`},
		{"token with a space", "server:\n  address: a:1\n  trust_bundle: /b.pem\n  node_attestation: {join_token: \"secret part\"}\n",
			"agent.yaml:4: server.node_attestation.join_token: want the token as one word (value not shown)"},
		{"devid without tpm", "server:\n  address: a:1\n  trust_bundle: /b.pem\n  node_attestation:\n    tpm_devid: {cert: /c, pub: /p, priv: /k}\n",
			"agent.yaml:2: server.node_attestation.tpm_devid: tpm_devid needs a tpm section (device or address)"},
		{"unknown key", "server:\n  adress: a:1\n", `agent.yaml:2: unknown key "adress" in server`},
		{"sync too fast", "server:\n  address: a:1\n  trust_bundle: /b.pem\n  sync_interval: 1ms\n  node_attestation: {join_token: x}\n",
			"agent.yaml:4: server.sync_interval: want a duration from 100ms to 1h, got 1ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("agent.yaml", []byte(tt.yaml))
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("err = %v\nwant prefix %s", err, tt.want)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Fatal("the error quotes the join token")
			}
		})
	}
}
