package audit

import (
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

// MaxRecordSize bounds one audit line, newline included: whatever a caller
// puts in a request (audiences, a kid quoted in an error, a long binary
// path), a record never takes more than this many bytes.
const MaxRecordSize = 4096

// Field caps, in encoded bytes between the quotes (escapes count). A longer
// value is cut at a character boundary and ends in "…"; the record then
// carries "truncated":true. When the whole record would still exceed
// MaxRecordSize, it is encoded again with every cap halved (then quartered,
// which always fits: a test checks the worst case).
const (
	capShort     = 64   // event, decision, kind, rpc
	capID        = 128  // serial, jti, container_id, pod_uid, token_sha256
	capName      = 256  // entry_id, systemd_unit, upstream, issuer, token_endpoint, scope, one audience
	capLong      = 512  // reason, spiffe_id, binary, cgroup
	capAudiences = 1024 // all audiences of a record together; the rest are counted in audience_omitted
	maxShift     = 2
)

// ellipsis marks a cut value (encoding/json leaves it unescaped).
const ellipsis = "…"

// encodeLine appends r as one JSON line of at most MaxRecordSize bytes.
func encodeLine(b []byte, r *Record) []byte {
	start := len(b)
	for shift := uint(0); ; shift++ {
		b = appendRecord(b[:start], r, shift)
		if len(b)-start+1 <= MaxRecordSize || shift >= maxShift {
			break
		}
	}
	return append(b, '\n')
}

// encoder appends fields with caps shifted right by shift, noting any cut.
type encoder struct {
	b     []byte
	shift uint
	cut   bool
}

// appendRecord appends r as one JSON object, the same document
// encoding/json would produce for Record when no field exceeds its cap (a
// test holds them equal), without reflection: the audit trail is written on
// every Workload API call.
func appendRecord(b []byte, r *Record, shift uint) []byte {
	e := &encoder{b: b, shift: shift}
	e.b = append(e.b, `{"time":`...)
	e.b = appendTime(e.b, r.Time)
	e.str(`,"event":`, r.Event, capShort, true)
	e.str(`,"decision":`, r.Decision, capShort, false)
	e.str(`,"reason":`, r.Reason, capLong, false)
	e.str(`,"kind":`, r.Kind, capShort, false)
	e.str(`,"rpc":`, r.RPC, capShort, false)
	e.str(`,"spiffe_id":`, r.SPIFFEID, capLong, false)
	omitted := r.Omitted
	if len(r.Audience) > 0 {
		e.b = append(e.b, `,"audience":[`...)
		budget := capAudiences >> shift
		for i, a := range r.Audience {
			mark := len(e.b)
			if i > 0 {
				e.b = append(e.b, ',')
			}
			e.quoted(a, capName)
			if i > 0 && len(e.b)-mark > budget {
				// Out of room: this one and the rest are only counted.
				e.b = e.b[:mark]
				omitted += len(r.Audience) - i
				e.cut = true
				break
			}
			budget -= len(e.b) - mark
		}
		e.b = append(e.b, ']')
	}
	if omitted > 0 {
		e.b = append(e.b, `,"audience_omitted":`...)
		e.b = strconv.AppendInt(e.b, int64(omitted), 10)
	}
	if r.ExpiresAt != nil {
		e.b = append(e.b, `,"expires_at":`...)
		e.b = appendTime(e.b, *r.ExpiresAt)
	}
	e.str(`,"serial":`, r.Serial, capID, false)
	e.str(`,"jti":`, r.JTI, capID, false)
	e.str(`,"entry_id":`, r.EntryID, capName, false)
	if c := r.Caller; c != nil {
		e.b = append(e.b, `,"caller":{"pid":`...)
		e.b = strconv.AppendInt(e.b, int64(c.PID), 10)
		e.b = append(e.b, `,"uid":`...)
		e.b = strconv.AppendUint(e.b, uint64(c.UID), 10)
		e.b = append(e.b, `,"gid":`...)
		e.b = strconv.AppendUint(e.b, uint64(c.GID), 10)
		e.str(`,"binary":`, c.Binary, capLong, false)
		e.str(`,"cgroup":`, c.Cgroup, capLong, false)
		e.str(`,"systemd_unit":`, c.SystemdUnit, capName, false)
		e.str(`,"container_id":`, c.ContainerID, capID, false)
		e.str(`,"pod_uid":`, c.PodUID, capID, false)
		e.b = append(e.b, '}')
	}
	e.str(`,"upstream":`, r.Upstream, capName, false)
	e.str(`,"issuer":`, r.Issuer, capName, false)
	e.str(`,"token_endpoint":`, r.Endpoint, capName, false)
	if r.DurationMS != 0 {
		e.b = append(e.b, `,"duration_ms":`...)
		e.b = appendFloat(e.b, r.DurationMS)
	}
	e.str(`,"scope":`, r.Scope, capName, false)
	e.str(`,"token_sha256":`, r.TokenSHA256, capID, false)
	e.str(`,"trace_id":`, r.TraceID, capID, false)
	e.str(`,"span_id":`, r.SpanID, capID, false)
	if r.UID != nil {
		e.b = append(e.b, `,"uid":`...)
		e.b = strconv.AppendUint(e.b, uint64(*r.UID), 10)
	}
	if r.Count != 0 {
		e.b = append(e.b, `,"count":`...)
		e.b = strconv.AppendUint(e.b, r.Count, 10)
	}
	if r.Since != nil {
		e.b = append(e.b, `,"since":`...)
		e.b = appendTime(e.b, *r.Since)
	}
	if r.Truncated || e.cut {
		e.b = append(e.b, `,"truncated":true`...)
	}
	return append(e.b, '}')
}

// str appends key and v (capped) unless v is empty and not always shown.
func (e *encoder) str(key, v string, max int, always bool) {
	if v == "" && !always {
		return
	}
	e.b = append(e.b, key...)
	e.quoted(v, max)
}

// quoted appends v as a JSON string of at most max>>shift encoded bytes
// between the quotes, cut with an ellipsis when longer.
func (e *encoder) quoted(v string, max int) {
	max >>= e.shift
	if len(v)*6 <= max || (len(v) <= max && plain(v)) { // the longest escape is 6 bytes per input byte
		e.b = appendQuoted(e.b, v)
		return
	}
	n, cut := 0, -1 // encoded size so far; where a cut leaves room for the ellipsis
	for i := 0; i < len(v); {
		w, size := encodedLen(v, i)
		if cut < 0 && n+w > max-len(ellipsis) {
			cut = i
		}
		if n += w; n > max {
			e.b = appendQuoted(e.b, v[:cut])
			e.b = append(e.b[:len(e.b)-1], ellipsis+`"`...)
			e.cut = true
			return
		}
		i += size
	}
	e.b = appendQuoted(e.b, v)
}

// plain reports whether v is ASCII that needs no escape (as most values
// are): its encoding is as long as v.
func plain(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// encodedLen returns how many bytes appendQuoted writes for the character
// at s[i], and how many bytes of s it takes.
func encodedLen(s string, i int) (out, in int) {
	c := s[i]
	if c < utf8.RuneSelf {
		switch {
		case c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&':
			return 1, 1
		case c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f':
			return 2, 1
		}
		return 6, 1
	}
	r, size := utf8.DecodeRuneInString(s[i:])
	if (r == utf8.RuneError && size == 1) || r == '\u2028' || r == '\u2029' {
		return 6, size
	}
	return size, size
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
