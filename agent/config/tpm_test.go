package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestTPMSection(t *testing.T) {
	cfg, err := Parse("agent.yaml", []byte("trust_domain: example.org\ntpm:\n  address: tcp://127.0.0.1:2321\n  ek_roots: /etc/nodeward/ek-roots.pem\n  pcrs: [0, 7]\nca:\n  key: tpm\n  tpm_handle: 0x81000101\n  intermediate_ttl: 12h\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TPM == nil || cfg.TPM.Addr() != "tcp://127.0.0.1:2321" || len(cfg.TPM.PCRs) != 2 || cfg.TPM.PCRs[1] != 7 ||
		time.Duration(cfg.TPM.QuoteInterval) != DefaultQuoteInterval || cfg.CA.Key != "tpm" || cfg.CA.TPMHandle != 0x81000101 ||
		time.Duration(cfg.CA.IntermediateTTL) != 12*time.Hour || time.Duration(cfg.TPM.StartupTimeout) != DefaultStartupTimeout {
		t.Fatalf("cfg.TPM = %+v, cfg.CA = %+v", cfg.TPM, cfg.CA)
	}
	if cfg, err := Parse("agent.yaml", []byte("trust_domain: example.org\n")); err != nil || cfg.TPM != nil {
		t.Fatalf("no tpm section must mean no TPM: %+v %v", cfg.TPM, err)
	}
	tests := []struct{ yaml, want string }{
		{"tpm:\n  device: /dev/tpmrm0\n  address: tcp://x:1\n", "agent.yaml:2: tpm: set exactly one of device"},
		{"tpm: {}\n", "agent.yaml:1: tpm: set exactly one of device"},
		{"tpm:\n  address: http://x\n", `agent.yaml:2: tpm.address: want tcp://host:port or unix:///path, got "http://x"`},
		{"tpm:\n  device: tpmrm0\n", `agent.yaml:2: tpm.device: want a device path`},
		{"tpm:\n  device: /dev/tpmrm0\n  pcrs: [7, 24]\n", `agent.yaml:3: tpm.pcrs[1]: want a PCR index from 0 to 23, got "24"`},
		{"tpm:\n  device: /dev/tpmrm0\n  pcrs: [7, 7]\n", `agent.yaml:3: tpm.pcrs[1]: PCR 7 listed twice`},
		{"tpm:\n  device: /dev/tpmrm0\n  quote_interval: 60\n", `agent.yaml:3: tpm.quote_interval: invalid duration "60"`},
		{"tpm:\n  device: /dev/tpmrm0\n  startup_timeout: 100ms\n", `agent.yaml:3: tpm.startup_timeout: want a duration from 1s to 10m, got 100ms`},
		{"tpm:\n  device: /dev/tpmrm0\n  startup_timeout: 1h\n", `agent.yaml:3: tpm.startup_timeout: want a duration from 1s to 10m, got 1h0m0s`},
		{"tpm:\n  device: /dev/tpmrm0\n  startup_timeout: soon\n", `agent.yaml:3: tpm.startup_timeout: invalid duration "soon"`},
		{"tpm:\n  device: /dev/tpmrm0\n  pcr: [7]\n", `agent.yaml:3: unknown key "pcr" in tpm`},
		{"ca:\n  key: tpm\n", "agent.yaml:2: ca.key: key: tpm needs a tpm section"},
		{"ca:\n  key: hsm\n", `agent.yaml:2: ca.key: want file or tpm, got "hsm"`},
		{"tpm:\n  device: /dev/tpmrm0\nca:\n  key: tpm\n  tpm_handle: 0x01c00002\n", `agent.yaml:5: ca.tpm_handle: want a persistent owner handle`},
	}
	if cfg, err := Parse("agent.yaml", []byte("trust_domain: example.org\ntpm:\n  device: /dev/tpmrm0\n  startup_timeout: 45s\n")); err != nil ||
		time.Duration(cfg.TPM.StartupTimeout) != 45*time.Second {
		t.Fatalf("startup_timeout: %+v %v", cfg, err)
	}
	for _, tt := range tests {
		_, err := Parse("agent.yaml", []byte(tt.yaml))
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q:\n got %v\nwant %s", tt.yaml, err, tt.want)
		}
	}
}
