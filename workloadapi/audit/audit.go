// Package audit writes the audit trail: one JSON line per decision (issue,
// deny, mint, rotate, revoke, validate; later token exchanges and breaker
// transitions), to a file or to standard output (journald under systemd).
//
// Security: a Record has no field that can hold a token, key or assertion;
// tokens are identified by their jti and certificates by their serial.
// A file sink is opened 0640 with O_APPEND and can be reopened (SIGUSR1) so
// log rotation tools can move it away.
package audit

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Caller describes the workload a decision was about.
type Caller struct {
	PID         int32  `json:"pid"`
	UID         uint32 `json:"uid"`
	GID         uint32 `json:"gid"`
	Binary      string `json:"binary,omitempty"`
	Cgroup      string `json:"cgroup,omitempty"`
	SystemdUnit string `json:"systemd_unit,omitempty"`
	ContainerID string `json:"container_id,omitempty"`
	PodUID      string `json:"pod_uid,omitempty"`
}

// Record is one audit line.
type Record struct {
	Time       time.Time  `json:"time"`
	Event      string     `json:"event"`              // issue, deny, mint, rotate, revoke, validate, reload
	Decision   string     `json:"decision,omitempty"` // allow, deny
	Reason     string     `json:"reason,omitempty"`
	Kind       string     `json:"kind,omitempty"` // x509, jwt, token
	RPC        string     `json:"rpc,omitempty"`
	SPIFFEID   string     `json:"spiffe_id,omitempty"`
	Audience   []string   `json:"audience,omitempty"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	Serial     string     `json:"serial,omitempty"`
	JTI        string     `json:"jti,omitempty"`
	EntryID    string     `json:"entry_id,omitempty"`
	Caller     *Caller    `json:"caller,omitempty"`
	Upstream   string     `json:"upstream,omitempty"`
	Issuer     string     `json:"issuer,omitempty"`
	Endpoint   string     `json:"token_endpoint,omitempty"`
	DurationMS float64    `json:"duration_ms,omitempty"`
}

var bufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// Logger writes records; the zero of *Logger (nil) discards them.
type Logger struct {
	mu   sync.Mutex
	path string // "" for a writer that cannot be reopened
	w    io.Writer
	f    *os.File
	now  func() time.Time
}

// Open returns a Logger for sink: "stdout", "stderr", "off" (nil Logger) or a
// file path (created 0640, appended to).
func Open(sink string) (*Logger, error) {
	switch sink {
	case "off":
		return nil, nil
	case "", "stdout":
		return New(os.Stdout), nil
	case "stderr":
		return New(os.Stderr), nil
	}
	l := &Logger{path: sink, now: time.Now}
	if err := l.Reopen(); err != nil {
		return nil, err
	}
	return l, nil
}

// New returns a Logger writing to w.
func New(w io.Writer) *Logger { return &Logger{w: w, now: time.Now} }

// Reopen reopens a file sink (after log rotation moved it); a no-op for
// other sinks.
func (l *Logger) Reopen() error {
	if l == nil || l.path == "" {
		return nil
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("audit log %s: %w", l.path, err)
	}
	l.mu.Lock()
	old := l.f
	l.f, l.w = f, f
	l.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	return nil
}

// Log writes r as one JSON line, setting Time when zero. Write errors are
// returned for the caller to count; a record is never half-written by two
// writers at once.
func (l *Logger) Log(r Record) error {
	if l == nil {
		return nil
	}
	if r.Time.IsZero() {
		r.Time = l.now()
	}
	bp := bufs.Get().(*[]byte)
	b := append(appendRecord((*bp)[:0], &r), '\n')
	l.mu.Lock()
	_, err := l.w.Write(b)
	l.mu.Unlock()
	*bp = b
	bufs.Put(bp)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	return nil
}

// Close closes a file sink.
func (l *Logger) Close() error {
	if l == nil || l.f == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Close()
}
