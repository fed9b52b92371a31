package config

import (
	"bytes"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"gopkg.in/yaml.v3"
)

// maxSocketPath is the longest path a Unix socket can bind (sun_path is 108
// bytes including the terminating NUL).
const maxSocketPath = 107

// parse is Parse with the file reader for entries_file injected (the fuzz
// target must not read the file system).
func parse(name string, data []byte, read func(string) ([]byte, error)) (*Agent, error) {
	d := decoder{file: name}
	cfg := Default()
	cfg.Source = name
	m, err := d.root(data)
	if err != nil {
		return nil, err
	}
	var entriesNode, tdNode, entriesFileNode, caNode, adminNode, serverNode, fedNode *yaml.Node
	if m != nil {
		err = d.fields(m, "", map[string]func(v *yaml.Node) error{
			"trust_domain": func(v *yaml.Node) error { tdNode = v; return d.str(v, "trust_domain", &cfg.TrustDomain) },
			"socket_path":  func(v *yaml.Node) error { return d.socketPath(v, &cfg.SocketPath) },
			"data_dir": func(v *yaml.Node) error {
				if err := d.str(v, "data_dir", &cfg.DataDir); err != nil {
					return err
				}
				if cfg.DataDir == "" {
					return d.errf(v, "data_dir", "must not be empty")
				}
				return nil
			},
			"admin_listen": func(v *yaml.Node) error { adminNode = v; return d.adminListen(v, &cfg.AdminListen) },
			"admin_listen_public": func(v *yaml.Node) error {
				return d.boolean(v, "admin_listen_public", &cfg.AdminListenPublic)
			},
			"log_level": func(v *yaml.Node) error {
				if err := d.str(v, "log_level", &cfg.LogLevel); err != nil {
					return err
				}
				switch cfg.LogLevel {
				case "debug", "info", "warn", "error":
					return nil
				}
				return d.errf(v, "log_level", "unknown level %s (want debug, info, warn or error)", quote(cfg.LogLevel))
			},
			"environment": func(v *yaml.Node) error {
				if err := d.str(v, "environment", &cfg.Environment); err != nil {
					return err
				}
				if !envName.MatchString(cfg.Environment) {
					return d.errf(v, "environment", "want a short lowercase name such as production or staging, got %s", quote(cfg.Environment))
				}
				return nil
			},
			"jwt_issuer": func(v *yaml.Node) error {
				if err := d.str(v, "jwt_issuer", &cfg.JWTIssuer); err != nil {
					return err
				}
				u, err := url.Parse(cfg.JWTIssuer)
				if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
					return d.errf(v, "jwt_issuer", "want an http(s) URL without query or fragment, got %s", quote(cfg.JWTIssuer))
				}
				return nil
			},
			"audit_log": func(v *yaml.Node) error {
				if err := d.str(v, "audit_log", &cfg.AuditLog); err != nil {
					return err
				}
				switch {
				case cfg.AuditLog == "stdout", cfg.AuditLog == "stderr", cfg.AuditLog == "off", filepath.IsAbs(cfg.AuditLog):
					return nil
				}
				return d.errf(v, "audit_log", "want stdout, stderr, off or an absolute file path, got %s", quote(cfg.AuditLog))
			},
			"max_procs": func(v *yaml.Node) error {
				if v.Kind == yaml.ScalarNode && v.Tag == "!!int" {
					if n, err := strconv.Atoi(v.Value); err == nil && n >= 0 && n <= 1024 {
						cfg.MaxProcs = n
						return nil
					}
				}
				return d.errf(v, "max_procs", "want an integer from 0 (all CPUs) to 1024")
			},
			"guardrails": func(v *yaml.Node) error { return d.guardrails(v, &cfg.Guardrails) },
			"tpm":        func(v *yaml.Node) error { return d.tpm(v, &cfg.TPM) },
			"ca":         func(v *yaml.Node) error { caNode = v; return d.ca(v, &cfg.CA) },
			"limits":     func(v *yaml.Node) error { return d.limits(v, &cfg.Limits) },
			"server":     func(v *yaml.Node) error { serverNode = v; return d.server(v, &cfg.Server) },
			"entries":    func(v *yaml.Node) error { entriesNode = v; return nil },
			"federation": func(v *yaml.Node) error { fedNode = v; return nil },
			"broker": func(v *yaml.Node) error {
				b, err := d.section(m, "broker", v, data)
				cfg.Broker = b
				return err
			},
			"entries_file": func(v *yaml.Node) error {
				entriesFileNode = v
				return d.str(v, "entries_file", &cfg.EntriesFile)
			},
		})
		if err != nil {
			return nil, err
		}
	}
	if err := d.checkAdminPublic(adminNode, cfg); err != nil {
		return nil, err
	}
	if cfg.Server != nil {
		// Fleet mode: the server is the CA and the policy authority.
		for _, n := range []struct {
			node *yaml.Node
			key  string
		}{{entriesNode, "entries"}, {entriesFileNode, "entries_file"}, {caNode, "ca"}, {fedNode, "federation"}} {
			if n.node != nil {
				return nil, d.errf(n.node, n.key, "not used with a server section: the SPIRE server holds the entries and signs the SVIDs (remove one of them)")
			}
		}
		if cfg.Server.NodeAttestation.TPMDevID != nil && cfg.TPM == nil {
			return nil, d.errf(serverNode, "server.node_attestation.tpm_devid", "tpm_devid needs a tpm section (device or address)")
		}
	}
	if cfg.CA.Key == "tpm" && cfg.TPM == nil {
		return nil, d.errf(caNode, "ca.key", "key: tpm needs a tpm section (device or address)")
	}
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, d.wrapf(tdNode, "trust_domain", err, "invalid trust domain %s: %v", quote(cfg.TrustDomain), err)
	}
	if fedNode != nil {
		if cfg.Federation, err = d.federation(fedNode, td); err != nil {
			return nil, err
		}
	}
	ids := map[string]string{} // explicit entry id -> "file:line" of its entry
	if entriesNode != nil {
		if cfg.Entries, err = d.entries(entriesNode, td, ids); err != nil {
			return nil, err
		}
	}
	if cfg.EntriesFile != "" {
		p := cfg.EntriesFile
		if !filepath.IsAbs(p) {
			p = filepath.Join(filepath.Dir(name), p)
		}
		data, err := read(p)
		if err != nil {
			return nil, d.wrapf(entriesFileNode, "entries_file", err, "%v", err)
		}
		more, err := parseEntriesFile(p, data, td, ids)
		if err != nil {
			return nil, err
		}
		cfg.Entries = append(cfg.Entries, more...)
	}
	if err := checkFederatesWith(cfg.Entries, cfg.Federation); err != nil {
		return nil, err
	}
	if err := d.checkCALife(cfg, caNode); err != nil {
		return nil, err
	}
	return cfg, nil
}

func (d decoder) socketPath(v *yaml.Node, dst *string) error {
	if err := d.str(v, "socket_path", dst); err != nil {
		return err
	}
	switch {
	case !filepath.IsAbs(*dst):
		return d.errf(v, "socket_path", "must be an absolute path, got %s", quote(*dst))
	case len(*dst) > maxSocketPath:
		return d.errf(v, "socket_path", "longer than %d bytes, the limit for a Unix socket path", maxSocketPath)
	}
	return nil
}

func (d decoder) adminListen(v *yaml.Node, dst *string) error {
	if isNull(v) {
		return nil
	}
	if err := d.str(v, "admin_listen", dst); err != nil || *dst == "" {
		return err
	}
	if _, port, err := net.SplitHostPort(*dst); err != nil || port == "" {
		return d.errf(v, "admin_listen", "want host:port such as 127.0.0.1:9464 (or nothing to disable), got %s", quote(*dst))
	}
	return nil
}

func (d decoder) guardrails(v *yaml.Node, g *Guardrails) error {
	if v.Kind != yaml.MappingNode {
		return d.errf(v, "guardrails", "want a mapping, got %s", kindName(v))
	}
	return d.fields(v, "guardrails", map[string]func(v *yaml.Node) error{
		"max_x509_ttl":    func(v *yaml.Node) error { return d.duration(v, "guardrails.max_x509_ttl", &g.MaxX509TTL) },
		"max_jwt_ttl":     func(v *yaml.Node) error { return d.duration(v, "guardrails.max_jwt_ttl", &g.MaxJWTTTL) },
		"require_owner":   func(v *yaml.Node) error { return d.boolean(v, "guardrails.require_owner", &g.RequireOwner) },
		"require_expires": func(v *yaml.Node) error { return d.boolean(v, "guardrails.require_expires", &g.RequireExpires) },
		"stale_after":     func(v *yaml.Node) error { return d.duration(v, "guardrails.stale_after", &g.StaleAfter) },
		"disable_stale":   func(v *yaml.Node) error { return d.boolean(v, "guardrails.disable_stale", &g.DisableStale) },
	})
}

// section returns the text of the block mapping v (the value of top-level
// key name), preceded by as many empty lines as come before it, so that a
// decoder of that text reports the lines of this file.
func (d decoder) section(root *yaml.Node, name string, v *yaml.Node, data []byte) ([]byte, error) {
	if v.Kind != yaml.MappingNode || v.Style&yaml.FlowStyle != 0 {
		return nil, d.errf(v, name, "want a block mapping (one key per line)")
	}
	start := v.Line // 1-based first line of the section's content
	end := -1       // 1-based line of the next top-level key, or -1 for EOF
	for i := 0; i+1 < len(root.Content); i += 2 {
		if k := root.Content[i]; k.Line > start && (end < 0 || k.Line < end) {
			end = k.Line
		}
	}
	lines := bytes.SplitAfter(data, []byte("\n"))
	var out []byte
	for i := 1; i < start; i++ {
		out = append(out, '\n')
	}
	for i := start; i <= len(lines) && (end < 0 || i < end); i++ {
		out = append(out, lines[i-1]...)
	}
	return out, nil
}

// envName is an environment value: empty, or a short lowercase name.
var envName = regexp.MustCompile(`^([a-z][a-z0-9-]{0,31})?$`)
