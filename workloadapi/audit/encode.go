package audit

import (
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

// appendRecord appends r as one JSON object, the same document
// encoding/json would produce for Record (a test holds them equal), without
// reflection: the audit trail is written on every Workload API call.
func appendRecord(b []byte, r *Record) []byte {
	b = append(b, `{"time":`...)
	b = appendTime(b, r.Time)
	b = appendStr(b, `,"event":`, r.Event, true)
	b = appendStr(b, `,"decision":`, r.Decision, false)
	b = appendStr(b, `,"reason":`, r.Reason, false)
	b = appendStr(b, `,"kind":`, r.Kind, false)
	b = appendStr(b, `,"rpc":`, r.RPC, false)
	b = appendStr(b, `,"spiffe_id":`, r.SPIFFEID, false)
	if len(r.Audience) > 0 {
		b = append(b, `,"audience":[`...)
		for i, a := range r.Audience {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendQuoted(b, a)
		}
		b = append(b, ']')
	}
	if r.ExpiresAt != nil {
		b = append(b, `,"expires_at":`...)
		b = appendTime(b, *r.ExpiresAt)
	}
	b = appendStr(b, `,"serial":`, r.Serial, false)
	b = appendStr(b, `,"jti":`, r.JTI, false)
	b = appendStr(b, `,"entry_id":`, r.EntryID, false)
	if c := r.Caller; c != nil {
		b = append(b, `,"caller":{"pid":`...)
		b = strconv.AppendInt(b, int64(c.PID), 10)
		b = append(b, `,"uid":`...)
		b = strconv.AppendUint(b, uint64(c.UID), 10)
		b = append(b, `,"gid":`...)
		b = strconv.AppendUint(b, uint64(c.GID), 10)
		b = appendStr(b, `,"binary":`, c.Binary, false)
		b = appendStr(b, `,"cgroup":`, c.Cgroup, false)
		b = appendStr(b, `,"systemd_unit":`, c.SystemdUnit, false)
		b = appendStr(b, `,"container_id":`, c.ContainerID, false)
		b = appendStr(b, `,"pod_uid":`, c.PodUID, false)
		b = append(b, '}')
	}
	b = appendStr(b, `,"upstream":`, r.Upstream, false)
	b = appendStr(b, `,"issuer":`, r.Issuer, false)
	b = appendStr(b, `,"token_endpoint":`, r.Endpoint, false)
	if r.DurationMS != 0 {
		b = append(b, `,"duration_ms":`...)
		b = appendFloat(b, r.DurationMS)
	}
	return append(b, '}')
}

func appendStr(b []byte, key, v string, always bool) []byte {
	if v == "" && !always {
		return b
	}
	b = append(b, key...)
	return appendQuoted(b, v)
}

func appendTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// appendQuoted writes s as a JSON string with encoding/json's escaping
// (HTML characters and U+2028/U+2029 escaped, invalid UTF-8 replaced).
func appendQuoted(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// appendFloat formats like encoding/json: 'f' form, or 'e' form with a
// two-digit exponent trimmed for very small or large magnitudes.
func appendFloat(b []byte, f float64) []byte {
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}
