package config

import (
	"math"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Limits bound what callers of the Workload API can make the agent hold
// (the `limits:` section). Every field has a default (DefaultLimits); a
// count of 0 is refused except for Rate, where 0 means unlimited.
type Limits struct {
	// MaxConns caps open Workload API connections of the whole agent.
	MaxConns int
	// MaxConnsPerUID caps the open connections of one caller uid.
	MaxConnsPerUID int
	// MaxStreams caps open streaming RPCs of the whole agent.
	MaxStreams int
	// MaxStreamsPerConn is gRPC's MaxConcurrentStreams: RPCs one connection
	// may have in flight.
	MaxStreamsPerConn int
	// MaxStreamsPerUID caps the open streaming RPCs of one caller uid.
	MaxStreamsPerUID int
	// IdleTimeout closes a connection that has had no RPC in flight for
	// this long (including one that never called).
	IdleTimeout Duration
	// Rate is the Workload API calls per second allowed per caller uid
	// (a stream counts once, when it opens); 0 means unlimited.
	Rate float64
	// Burst is the token-bucket depth of Rate.
	Burst int
	// JWTCacheBytes bounds the bytes held by the JWT-SVID caches.
	JWTCacheBytes int64
}

// DefaultLimits are the limits when the config gives none.
func DefaultLimits() Limits {
	return Limits{
		MaxConns:          1024,
		MaxConnsPerUID:    128,
		MaxStreams:        1024,
		MaxStreamsPerConn: 64,
		MaxStreamsPerUID:  256,
		IdleTimeout:       Duration(5 * time.Minute),
		Rate:              1000,
		Burst:             2000,
		JWTCacheBytes:     4 << 20,
	}
}

// maxLimitCount bounds the count keys of the limits section.
const maxLimitCount = 1 << 20

// maxCacheBytes bounds limits.jwt_cache_bytes (1 GiB).
const maxCacheBytes = 1 << 30

func (d decoder) limits(v *yaml.Node, l *Limits) error {
	if v.Kind != yaml.MappingNode {
		return d.errf(v, "limits", "want a mapping, got %s", kindName(v))
	}
	return d.fields(v, "limits", map[string]func(v *yaml.Node) error{
		"max_conns":            func(v *yaml.Node) error { return d.count(v, "limits.max_conns", 1, &l.MaxConns) },
		"max_conns_per_uid":    func(v *yaml.Node) error { return d.count(v, "limits.max_conns_per_uid", 1, &l.MaxConnsPerUID) },
		"max_streams":          func(v *yaml.Node) error { return d.count(v, "limits.max_streams", 1, &l.MaxStreams) },
		"max_streams_per_conn": func(v *yaml.Node) error { return d.count(v, "limits.max_streams_per_conn", 1, &l.MaxStreamsPerConn) },
		"max_streams_per_uid":  func(v *yaml.Node) error { return d.count(v, "limits.max_streams_per_uid", 1, &l.MaxStreamsPerUID) },
		"idle_timeout":         func(v *yaml.Node) error { return d.duration(v, "limits.idle_timeout", &l.IdleTimeout) },
		"burst":                func(v *yaml.Node) error { return d.count(v, "limits.burst", 1, &l.Burst) },
		"rate": func(v *yaml.Node) error {
			if v.Kind == yaml.ScalarNode && (v.Tag == "!!int" || v.Tag == "!!float") {
				if f, err := strconv.ParseFloat(v.Value, 64); err == nil && f >= 0 && f <= maxLimitCount && !math.IsNaN(f) {
					l.Rate = f
					return nil
				}
			}
			return d.errf(v, "limits.rate", "want calls per second from 0 (unlimited) to %d, got %s", maxLimitCount, quote(v.Value))
		},
		"jwt_cache_bytes": func(v *yaml.Node) error {
			n, ok := parseBytes(v)
			if !ok || n < 64<<10 || n > maxCacheBytes {
				return d.errf(v, "limits.jwt_cache_bytes", "want a size from 64KiB to 1GiB such as 4MiB, got %s", quote(v.Value))
			}
			l.JWTCacheBytes = n
			return nil
		},
	})
}

// count decodes an integer from lo to maxLimitCount.
func (d decoder) count(v *yaml.Node, field string, lo int, dst *int) error {
	if v.Kind == yaml.ScalarNode && v.Tag == "!!int" {
		if n, err := strconv.Atoi(v.Value); err == nil && n >= lo && n <= maxLimitCount {
			*dst = n
			return nil
		}
	}
	return d.errf(v, field, "want an integer from %d to %d, got %s", lo, maxLimitCount, quote(v.Value))
}

// parseBytes reads a byte size: a plain integer or one with a unit B, KiB,
// MiB or GiB.
func parseBytes(v *yaml.Node) (int64, bool) {
	if v.Kind != yaml.ScalarNode {
		return 0, false
	}
	s, mult := v.Value, int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"B", 1}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = n, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, false
	}
	return n * mult, true
}
