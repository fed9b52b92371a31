package config

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// DefaultQuoteInterval is how often the TPM is re-quoted (tpm.quote_interval).
const DefaultQuoteInterval = 60 * time.Second

// DefaultStartupTimeout bounds the TPM work at agent start
// (tpm.startup_timeout).
const DefaultStartupTimeout = 15 * time.Second

// DefaultTPMKeyHandle is the persistent handle of a TPM-held CA root key.
const DefaultTPMKeyHandle = 0x81000100

// TPM is the `tpm:` section. Without it nothing touches a TPM.
type TPM struct {
	// Device is a TPM character device such as /dev/tpmrm0.
	Device string
	// Address is tcp://host:port or unix:///path of a TPM simulator
	// (swtpm). Exactly one of Device and Address is set.
	Address string
	// EKRoots is a PEM file of the TPM manufacturers' root certificates;
	// with it, the EK certificate chain is verified at start and
	// tpm:ek-ca selectors are produced.
	EKRoots string
	// PCRs are the sha256-bank PCR indexes quoted into tpm:pcr selectors.
	PCRs []int
	// QuoteInterval is how often the PCRs are re-quoted (default 60s).
	QuoteInterval Duration
	// StartupTimeout bounds the TPM work at start (open, EK, first quote,
	// CA key and first intermediate); default 15s. A TPM that does not
	// answer in time fails the start.
	StartupTimeout Duration
}

// Addr is the TPM address for attestors/tpm.Open (device path or URL).
func (t *TPM) Addr() string {
	if t.Device != "" {
		return t.Device
	}
	return t.Address
}

// CA is the `ca:` section.
type CA struct {
	// Key is "file" (default: a P-256 key in data_dir) or "tpm" (a
	// non-exportable key in the TPM that signs a rotating software
	// intermediate; needs the tpm section).
	Key string
	// TPMHandle is the persistent handle of the TPM key (default 0x81000100);
	// `nodeward ca rotate --tpm-root` uses TPMHandle+1 too (docs/keys.md).
	TPMHandle uint32
	// IntermediateTTL is the intermediate's lifetime with key: tpm (default 24h).
	IntermediateTTL Duration
	// TTL is the life of each file-held root (default 7d): the next root
	// is prepared at half of it and activated at 5/6 (docs/keys.md). It
	// must be at least CALifeFactor times the longest X.509-SVID ttl of the
	// entries. Not used with key: tpm (the TPM root is not auto-rotated).
	TTL Duration
	// JWTKeyTTL is the life of each JWT signing key (default 7d), at least
	// CALifeFactor times the longest JWT-SVID ttl of the entries.
	JWTKeyTTL Duration
	// NoRotate (`rotate: false`) keeps one root and one JWT key for good,
	// the behaviour before key rotation (ttl and jwt_key_ttl unused).
	NoRotate bool
}

// DefaultCATTL is the default ca.ttl and ca.jwt_key_ttl.
const DefaultCATTL = 7 * 24 * time.Hour

// CALifeFactor: a key's life must be at least this many times the longest
// SVID ttl it signs, since it is replaced at 5/6 of its life and SVIDs are
// cut at its expiry.
const CALifeFactor = 6

func (d decoder) tpm(v *yaml.Node, dst **TPM) error {
	if v.Kind != yaml.MappingNode {
		return d.errf(v, "tpm", "want a mapping (device or address), got %s", kindName(v))
	}
	t := &TPM{QuoteInterval: Duration(DefaultQuoteInterval), StartupTimeout: Duration(DefaultStartupTimeout)}
	err := d.fields(v, "tpm", map[string]func(v *yaml.Node) error{
		"device": func(v *yaml.Node) error {
			if err := d.str(v, "tpm.device", &t.Device); err != nil {
				return err
			}
			if !filepath.IsAbs(t.Device) {
				return d.errf(v, "tpm.device", "want a device path such as /dev/tpmrm0, got %s", quote(t.Device))
			}
			return nil
		},
		"address": func(v *yaml.Node) error {
			if err := d.str(v, "tpm.address", &t.Address); err != nil {
				return err
			}
			if !strings.HasPrefix(t.Address, "tcp://") && !strings.HasPrefix(t.Address, "unix:///") {
				return d.errf(v, "tpm.address", "want tcp://host:port or unix:///path, got %s", quote(t.Address))
			}
			return nil
		},
		"ek_roots": func(v *yaml.Node) error {
			if err := d.str(v, "tpm.ek_roots", &t.EKRoots); err != nil {
				return err
			}
			if !filepath.IsAbs(t.EKRoots) {
				return d.errf(v, "tpm.ek_roots", "want an absolute file path, got %s", quote(t.EKRoots))
			}
			return nil
		},
		"pcrs": func(v *yaml.Node) error {
			if v.Kind != yaml.SequenceNode {
				return d.errf(v, "tpm.pcrs", "want a list of PCR indexes (0-23), got %s", kindName(v))
			}
			seen := map[int]bool{}
			for i, item := range v.Content {
				n, err := strconv.Atoi(item.Value)
				if item.Kind != yaml.ScalarNode || item.Tag != "!!int" || err != nil || n < 0 || n > 23 {
					return d.errf(item, fmt.Sprintf("tpm.pcrs[%d]", i), "want a PCR index from 0 to 23, got %s", kindName(item))
				}
				if seen[n] {
					return d.errf(item, fmt.Sprintf("tpm.pcrs[%d]", i), "PCR %d listed twice", n)
				}
				seen[n] = true
				t.PCRs = append(t.PCRs, n)
			}
			return nil
		},
		"quote_interval": func(v *yaml.Node) error { return d.duration(v, "tpm.quote_interval", &t.QuoteInterval) },
		"startup_timeout": func(v *yaml.Node) error {
			if err := d.duration(v, "tpm.startup_timeout", &t.StartupTimeout); err != nil {
				return err
			}
			if t.StartupTimeout < Duration(time.Second) || t.StartupTimeout > Duration(10*time.Minute) {
				return d.errf(v, "tpm.startup_timeout", "want a duration from 1s to 10m, got %s", time.Duration(t.StartupTimeout))
			}
			return nil
		},
	})
	if err != nil {
		return err
	}
	if (t.Device == "") == (t.Address == "") {
		return d.errf(v, "tpm", "set exactly one of device (/dev/tpmrm0) and address (tcp://host:port, unix:///path)")
	}
	*dst = t
	return nil
}

func (d decoder) ca(v *yaml.Node, c *CA) error {
	if v.Kind != yaml.MappingNode {
		return d.errf(v, "ca", "want a mapping, got %s", kindName(v))
	}
	return d.fields(v, "ca", map[string]func(v *yaml.Node) error{
		"key": func(v *yaml.Node) error {
			if err := d.str(v, "ca.key", &c.Key); err != nil {
				return err
			}
			if c.Key != "file" && c.Key != "tpm" {
				return d.errf(v, "ca.key", "want file or tpm, got %s", quote(c.Key))
			}
			return nil
		},
		"tpm_handle": func(v *yaml.Node) error {
			h, err := strconv.ParseUint(v.Value, 0, 32)
			if v.Kind != yaml.ScalarNode || err != nil || h < 0x81000000 || h > 0x817FFFFF {
				return d.errf(v, "ca.tpm_handle", "want a persistent owner handle from 0x81000000 to 0x817fffff, got %s", kindName(v))
			}
			c.TPMHandle = uint32(h)
			return nil
		},
		"intermediate_ttl": func(v *yaml.Node) error { return d.duration(v, "ca.intermediate_ttl", &c.IntermediateTTL) },
		"ttl":              func(v *yaml.Node) error { return d.duration(v, "ca.ttl", &c.TTL) },
		"jwt_key_ttl":      func(v *yaml.Node) error { return d.duration(v, "ca.jwt_key_ttl", &c.JWTKeyTTL) },
		"rotate": func(v *yaml.Node) error {
			rotate := true
			if err := d.boolean(v, "ca.rotate", &rotate); err != nil {
				return err
			}
			c.NoRotate = !rotate
			return nil
		},
	})
}

// childNode is the value of key in mapping n (nil when absent).
func childNode(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// checkCALife applies the CALifeFactor rule to the entries' TTLs; caNode is
// the ca section (nil when absent), for the error's line.
func (d decoder) checkCALife(cfg *Agent, caNode *yaml.Node) error {
	if cfg.CA.NoRotate {
		return nil
	}
	var maxX, maxJ time.Duration
	var posX, posJ string
	for _, e := range cfg.Entries {
		x, j := time.Duration(e.X509TTL), time.Duration(e.JWTTTL)
		if x == 0 {
			x = DefaultX509TTL
		}
		if j == 0 {
			j = DefaultJWTTTL
		}
		if x > maxX {
			maxX, posX = x, e.Pos
		}
		if j > maxJ {
			maxJ, posJ = j, e.Pos
		}
	}
	// Without an explicit ttl the default grows to fit the entries (at
	// most MaxTTL): long SVID ttls are a choice made in the entries.
	if childNode(caNode, "ttl") == nil && time.Duration(cfg.CA.TTL) < CALifeFactor*maxX {
		cfg.CA.TTL = Duration(min(CALifeFactor*maxX, MaxTTL))
	}
	if childNode(caNode, "jwt_key_ttl") == nil && time.Duration(cfg.CA.JWTKeyTTL) < CALifeFactor*maxJ {
		cfg.CA.JWTKeyTTL = Duration(min(CALifeFactor*maxJ, MaxTTL))
	}
	if cfg.CA.Key != "tpm" && childNode(caNode, "ttl") != nil && time.Duration(cfg.CA.TTL) < CALifeFactor*maxX {
		return d.errf(childNode(caNode, "ttl"), "ca.ttl", "%s is less than %d x the longest X.509-SVID ttl (%s, entry at %s): a root is replaced at 5/6 of its life and SVIDs are cut at its expiry; raise ca.ttl to at least %s or shorten the ttl",
			time.Duration(cfg.CA.TTL), CALifeFactor, maxX, posX, CALifeFactor*maxX)
	}
	if childNode(caNode, "jwt_key_ttl") != nil && time.Duration(cfg.CA.JWTKeyTTL) < CALifeFactor*maxJ {
		return d.errf(childNode(caNode, "jwt_key_ttl"), "ca.jwt_key_ttl", "%s is less than %d x the longest JWT-SVID ttl (%s, entry at %s): a JWT key is replaced at 5/6 of its life and JWT-SVIDs are cut at its expiry; raise ca.jwt_key_ttl to at least %s or shorten the ttl",
			time.Duration(cfg.CA.JWTKeyTTL), CALifeFactor, maxJ, posJ, CALifeFactor*maxJ)
	}
	return nil
}
