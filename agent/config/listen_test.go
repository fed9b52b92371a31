package config

import (
	"strings"
	"testing"
)

// TestAdminListenPublicOptIn (issue 11, item 15): a non-loopback
// admin_listen is a config error naming file, line and field unless
// admin_listen_public: true.
func TestAdminListenPublicOptIn(t *testing.T) {
	tests := []struct {
		yaml    string
		wantErr string
	}{
		{"admin_listen: 127.0.0.1:9464\n", ""},
		{"admin_listen: 127.0.0.53:9464\n", ""},
		{"admin_listen: \"[::1]:9464\"\n", ""},
		{"admin_listen: localhost:9464\n", ""},
		{"log_level: info\nadmin_listen: 0.0.0.0:9464\n", `agent.yaml:2: admin_listen: "0.0.0.0:9464" is not a loopback address`},
		{"admin_listen: :9464\n", `agent.yaml:1: admin_listen: ":9464" is not a loopback address`},
		{"admin_listen: \"[::]:9464\"\n", `agent.yaml:1: admin_listen: "[::]:9464" is not a loopback address`},
		{"admin_listen: 10.1.2.3:9464\n", `is not a loopback address`},
		{"admin_listen: node.example:9464\n", `is not a loopback address`},
		{"admin_listen: 0.0.0.0:9464\nadmin_listen_public: true\n", ""},
		{"admin_listen_public: true\nadmin_listen: 10.1.2.3:9464\n", ""},
		{"admin_listen: 0.0.0.0:9464\nadmin_listen_public: false\n", `admin_listen_public: true`},
		{"admin_listen_public: yes please\n", `agent.yaml:1: admin_listen_public: want true or false`},
	}
	for _, tt := range tests {
		_, err := Parse("agent.yaml", []byte(tt.yaml))
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("%q: %v", tt.yaml, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("%q: got %v, want an error containing %q", tt.yaml, err, tt.wantErr)
		}
	}
}
