package config

import (
	"fmt"
	"strings"
	"testing"
)

// BenchmarkParse parses a config of 1000 entries (about 150 KB).
func BenchmarkParse(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("trust_domain: example.org\nentries:\n")
	for i := range 1000 {
		fmt.Fprintf(&sb, "  - spiffe_id: spiffe://example.org/svc/%d\n    selectors: [unix:uid:%d, systemd:unit:svc%d.service]\n    x509_ttl: 1h\n    dns_names: [svc%d.internal]\n", i, 1000+i, i, i)
	}
	data := []byte(sb.String())
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		cfg, err := Parse("agent.yaml", data)
		if err != nil || len(cfg.Entries) != 1000 {
			b.Fatalf("Parse: %d entries, %v", len(cfg.Entries), err)
		}
	}
}
