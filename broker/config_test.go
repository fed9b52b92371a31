package broker

import (
	"strings"
	"testing"
	"time"
)

const goodConfig = `workload_socket: unix:///run/nodeward/workload.sock
listen: /run/nodeward/broker.sock
listen_tcp: 127.0.0.1:8181
allow_uids: [1000]
allow_gids: []
upstreams:
  - name: corp
    token_endpoint: https://idp.example.com/oauth2/token
    grant: token-exchange
    client_id: nodeward-broker
    svid_audience: https://idp.example.com
    scopes: [read]
    timeout: 5s
cache:
  max_entries: 10000
  refresh_window: [0.5, 0.8]
  idle_timeout: 30m
breaker:
  consecutive_failures: 5
  open_timeout: 30s
`

func TestParseConfig(t *testing.T) {
	cfg, err := ParseConfig("broker.yaml", []byte(goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Upstreams[0].Grant != "token-exchange" || time.Duration(cfg.Breaker.OpenTimeout) != 30*time.Second ||
		cfg.CacheConfig().RefreshWindow != [2]float64{0.5, 0.8} || cfg.AllowUIDs[0] != 1000 {
		t.Fatalf("cfg = %+v", cfg)
	}
	tests := []struct{ name, yaml, want string }{
		{"unknown key", strings.Replace(goodConfig, "listen_tcp", "listen_tpc", 1), `broker.yaml:3: unknown key "listen_tpc"`},
		{"unknown upstream key", strings.Replace(goodConfig, "client_id", "clientid", 1), `broker.yaml:10: unknown key "clientid"`},
		{"bad grant", strings.Replace(goodConfig, "grant: token-exchange", "grant: password", 1), `broker.yaml:9: upstreams[0].grant:`},
		{"bad endpoint", strings.Replace(goodConfig, "https://idp.example.com/oauth2/token", "idp/token", 1), `broker.yaml:8: upstreams[0].token_endpoint:`},
		{"tcp not loopback", strings.Replace(goodConfig, "127.0.0.1:8181", "0.0.0.0:8181", 1), `broker.yaml:3: listen_tcp: must be a loopback address`},
		{"window", strings.Replace(goodConfig, "[0.5, 0.8]", "[0.9, 0.2]", 1), `broker.yaml:16: cache.refresh_window`},
		{"bare duration", strings.Replace(goodConfig, "timeout: 5s", "timeout: 5", 1), `broker.yaml:13: invalid duration "5"`},
		{"no upstreams", "listen: /run/x.sock\n", `upstreams: at least one upstream (or svid_files entry) is required`},
		{"svid_files relative path", "listen: /run/x.sock\nsvid_files:\n  - x509_bundle: /b.pem\n  - x509_svid: /s.pem\n    x509_key: k.pem\n",
			`broker.yaml:5: svid_files[1].x509_key: must be an absolute path, got "k.pem"`},
		{"svid_files jwt audience", "listen: /run/x.sock\nsvid_files:\n  - jwt_svids:\n      - path: /t\n",
			`broker.yaml:4: svid_files[0].jwt_svids[0].audience: audience is required`},
		{"token sink on_rotate", "listen: /run/x.sock\nupstreams:\n  - name: corp\n    token_endpoint: https://idp/token\n    grant: jwt-bearer\nsinks:\n  - upstream: corp\n    path: /run/t\n    on_rotate:\n      signal: HUP\n",
			`broker.yaml:10: sinks[0].on_rotate.signal: signal needs pid_file or unit`},
		{"svid_files unknown key", "listen: /run/x.sock\nsvid_files:\n  - x509_bundel: /b.pem\n", `broker.yaml:3: unknown key "x509_bundel"`},
		{"public metrics without opt-in", goodConfig + "metrics_listen: 0.0.0.0:9465\n", `broker.yaml:21: metrics_listen: "0.0.0.0:9465" is not a loopback address`},
		{"negative limit", goodConfig + "limits:\n  burst: -1\n", `broker.yaml:22: limits.burst: must not be negative`},
		{"unknown limits key", goodConfig + "limits:\n  bursts: 1\n", `broker.yaml:22: unknown key "bursts"`},
		{"empty token type", strings.Replace(goodConfig, "    timeout: 5s\n", "    timeout: 5s\n    token_types: [Bearer, \"\"]\n", 1), `broker.yaml:14: upstreams[0].token_types[1]: want a token type`},
		{"bare max_retry_after", goodConfig + "  max_retry_after: 60\n", `broker.yaml:21: invalid duration "60"`},
	}
	// The keys of issue 11's broker items.
	cfg, err = ParseConfig("broker.yaml", []byte(strings.Replace(goodConfig, "    timeout: 5s\n", "    timeout: 5s\n    token_types: [Bearer, DPoP]\n", 1)+
		"  max_retry_after: 20s\nmetrics_listen: 0.0.0.0:9465\nmetrics_listen_public: true\nlimits:\n  upstream_calls_per_second: 2.5\n  burst: 10\n  keys_per_caller: 100\n"))
	if err != nil {
		t.Fatal(err)
	}
	if time.Duration(cfg.Breaker.MaxRetryAfter) != 20*time.Second || cfg.LimitsConfig() != (LimitsConfig{UpstreamCallsPerSecond: 2.5, Burst: 10, KeysPerCaller: 100}) ||
		len(cfg.Upstreams[0].config().TokenTypes) != 2 || !cfg.MetricsListenPublic {
		t.Errorf("new keys: %+v", cfg)
	}
	if _, err := ParseConfig("broker.yaml", []byte("listen: /run/x.sock\nsvid_files:\n  - x509_bundle: /b.pem\n")); err != nil {
		t.Errorf("a broker with only svid_files (spiffe-helper mode): %v", err)
	}
	for _, tt := range tests {
		if _, err := ParseConfig("broker.yaml", []byte(tt.yaml)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v\n want %q", tt.name, err, tt.want)
		}
	}
}
