package config

import (
	"net"
	"strings"

	"gopkg.in/yaml.v3"
)

// isLoopback reports whether the host of a host:port listen address only
// binds the loopback interface: a loopback IP (127.0.0.0/8, ::1) or
// "localhost". An empty host or an unspecified address (0.0.0.0, ::) binds
// every interface; any other name or address is reachable from elsewhere.
func isLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkAdminPublic refuses a non-loopback admin_listen without
// admin_listen_public: true. The admin listener serves /v1/status, which
// lists every entry's selectors, and /metrics; it has no authentication.
func (d decoder) checkAdminPublic(v *yaml.Node, cfg *Agent) error {
	if cfg.AdminListen == "" || cfg.AdminListenPublic || isLoopback(cfg.AdminListen) {
		return nil
	}
	return d.errf(v, "admin_listen", "%s is not a loopback address: the admin listener has no authentication and "+
		"/v1/status lists every entry's selectors; use 127.0.0.1:PORT, or set admin_listen_public: true to serve it beyond this host",
		quote(cfg.AdminListen))
}
