// Package audit writes the audit trail: one JSON line per decision (issue,
// deny, mint, rotate, revoke, validate; later token exchanges and breaker
// transitions), to a file or to standard output (journald under systemd).
//
// Security: a Record has no field that can hold a token, key or assertion;
// tokens are identified by their jti and certificates by their serial.
// What a caller can make the trail write is bounded: every record is at
// most MaxRecordSize bytes (long fields cut and marked), and denials a
// caller provokes are rate-limited per uid, the dropped ones counted in an
// "audit_dropped" record and a metric. A file sink is opened with
// O_NOFOLLOW|O_APPEND (created 0640), must be a regular file owned by root
// or the agent's euid and not writable by group or others, in a directory
// only they can change (safefs), and is checked again on each reopen
// (SIGUSR1) so log rotation tools can move it away.
package audit

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nodeward/nodeward/internal/safefs"
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
	Omitted    int        `json:"audience_omitted,omitempty"` // audiences left out of Audience (size bound)
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	Serial     string     `json:"serial,omitempty"`
	JTI        string     `json:"jti,omitempty"`
	EntryID    string     `json:"entry_id,omitempty"`
	Caller     *Caller    `json:"caller,omitempty"`
	Upstream   string     `json:"upstream,omitempty"`
	Issuer     string     `json:"issuer,omitempty"`
	Endpoint   string     `json:"token_endpoint,omitempty"`
	DurationMS float64    `json:"duration_ms,omitempty"`

	// Scope and TokenSHA256 describe a broker token: its OAuth2 scopes
	// (space-separated) and the hex SHA-256 of the access token, which
	// identifies it without holding it.
	Scope       string `json:"scope,omitempty"`
	TokenSHA256 string `json:"token_sha256,omitempty"`

	// TraceID and SpanID (lowercase hex, W3C) name the span of the
	// decision when tracing is on (internal/tracing); empty otherwise.
	TraceID string `json:"trace_id,omitempty"`
	SpanID  string `json:"span_id,omitempty"`

	// UID, Count and Since describe an audit_dropped record: Count
	// records of caller UID (no UID: of several uids) dropped by the rate
	// limit since Since.
	UID   *uint32    `json:"uid,omitempty"`
	Count uint64     `json:"count,omitempty"`
	Since *time.Time `json:"since,omitempty"`

	// Truncated is set by the encoder when a field was cut (it ends in
	// "…") or audiences were left out to keep the record within
	// MaxRecordSize.
	Truncated bool `json:"truncated,omitempty"`
}

var bufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// Hooks are told about records that did not reach the sink, one call per
// record (for metrics).
type Hooks struct {
	Lost    func() // a record could not be written, or only partly (write error, closed sink)
	Dropped func() // a caller's denial was dropped by the rate limit
}

// Logger writes records; the zero of *Logger (nil) discards them.
type Logger struct {
	mu      sync.Mutex // held while writing; guards w, f, closed and partial
	w       io.Writer
	f       *os.File
	closed  bool // Close was called on a file sink
	partial bool // the last write stopped mid-line: start the next one on a new line

	path  string // "" for a writer that cannot be reopened
	now   func() time.Time
	hooks atomic.Pointer[Hooks]
	lim   *limiter // nil: no rate limit
}

// Open returns a Logger for sink: "stdout", "stderr", "off" (nil Logger) or a
// file path (created 0640, appended to; see Reopen for the checks). Denials
// are rate-limited with DefaultLimits.
func Open(sink string) (*Logger, error) {
	switch sink {
	case "off":
		return nil, nil
	case "", "stdout":
		return New(os.Stdout), nil
	case "stderr":
		return New(os.Stderr), nil
	}
	l := New(nil)
	l.path = sink
	if err := l.Reopen(); err != nil {
		return nil, err
	}
	return l, nil
}

// New returns a Logger writing to w, with denials rate-limited with
// DefaultLimits.
func New(w io.Writer) *Logger {
	l := &Logger{w: w, now: time.Now}
	l.lim = newLimiter(DefaultLimits, l.flushDropped)
	return l
}

// SetHooks installs h (for example metrics counters); safe at any time.
func (l *Logger) SetHooks(h Hooks) {
	if l != nil {
		l.hooks.Store(&h)
	}
}

// SetLimits replaces the rate limit on denials (zero PerUID: none). Call it
// before the Logger is used.
func (l *Logger) SetLimits(lim Limits) {
	if l == nil {
		return
	}
	l.lim = nil
	if lim.PerUID > 0 {
		l.lim = newLimiter(lim, l.flushDropped)
	}
}

// Reopen (re)opens a file sink, after log rotation moved it; a no-op for
// other sinks. The path must pass openFile's checks; when it does not, the
// Logger keeps writing to the file it has and Reopen returns why.
func (l *Logger) Reopen() error {
	if l == nil || l.path == "" {
		return nil
	}
	f, err := openFile(l.path)
	if err != nil {
		return err
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		_ = f.Close()
		return fmt.Errorf("audit log %s: %w", l.path, os.ErrClosed)
	}
	old := l.f
	l.f, l.w, l.partial = f, f, false
	l.mu.Unlock()
	if old != nil {
		_ = old.Close() // nothing writes to it any more
	}
	return nil
}

// openFile opens an audit file for appending: the directory holding it must
// pass safefs.CheckDir; an existing file must be a regular file (not a
// symlink, FIFO or device) with one link, owned by root or the effective
// uid and not writable by group or others. It is checked before opening
// (nothing else is ever opened) and again on the open descriptor.
func openFile(path string) (*os.File, error) {
	if err := safefs.CheckParents(path); err != nil {
		return nil, fmt.Errorf("audit log %s: directory: %w", path, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if err := checkFile(path, fi); err != nil {
			return nil, fmt.Errorf("audit log: %w", err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0o640)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("audit log: %s is a symlink: %w", path, safefs.ErrUnsafe)
		}
		return nil, fmt.Errorf("audit log: %w", err)
	}
	fi, err := f.Stat()
	if err == nil {
		err = checkFile(path, fi)
	}
	if err != nil {
		_ = f.Close() // refused: the error that matters is err
		return nil, fmt.Errorf("audit log: %w", err)
	}
	return f, nil
}

// checkFile is safefs.CheckFileInfo (not private: the file may be
// group-readable) plus a single link: a hard link would make the agent
// append to some other file.
func checkFile(path string, fi fs.FileInfo) error {
	if err := safefs.CheckFileInfo(path, fi, false); err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
		return fmt.Errorf("%s has %d hard links: %w", path, st.Nlink, safefs.ErrUnsafe)
	}
	return nil
}

// Log writes r as one JSON line of at most MaxRecordSize bytes, setting Time
// when zero. A denial with a Caller is subject to the per-uid rate limit:
// dropped ones are counted (Hooks.Dropped, and an audit_dropped record
// later) and Log returns nil for them. A record that cannot be written is
// counted (Hooks.Lost) and its error returned for the caller to log; a
// record is never half-written by two writers at once.
func (l *Logger) Log(r Record) error {
	if l == nil {
		return nil
	}
	now := l.now()
	if r.Time.IsZero() {
		r.Time = now
	}
	if lim := l.lim; lim != nil && r.Decision == "deny" && r.Caller != nil {
		ok, summary := lim.admit(r.Caller.UID, now)
		if summary != nil {
			_ = l.write(summary) // a loss is counted by write
		}
		if !ok {
			if h := l.hooks.Load(); h != nil && h.Dropped != nil {
				h.Dropped()
			}
			return nil
		}
	}
	return l.write(&r)
}

// write encodes and writes one record, counting it when lost.
func (l *Logger) write(r *Record) error {
	bp := bufs.Get().(*[]byte)
	// b[0] is a newline, written only to end a line a failed write left
	// unfinished, so that the next record starts on a line of its own.
	b := encodeLine(append((*bp)[:0], '\n'), r)
	l.mu.Lock()
	err := l.writeLocked(b)
	l.mu.Unlock()
	*bp = b
	bufs.Put(bp)
	if err != nil {
		if h := l.hooks.Load(); h != nil && h.Lost != nil {
			h.Lost()
		}
		return fmt.Errorf("audit: %w", err)
	}
	return nil
}

func (l *Logger) writeLocked(b []byte) error {
	if l.closed || l.w == nil {
		return os.ErrClosed
	}
	if !l.partial {
		b = b[1:]
	}
	n, err := l.w.Write(b)
	if l.partial && n > 0 {
		l.partial = false // the separating newline landed
		n, b = n-1, b[1:]
	}
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	if err != nil && n > 0 {
		l.partial = true // part of this record is on disk: fence it off
	}
	return err
}

// flushDropped writes the audit_dropped records due (the limiter's timer).
func (l *Logger) flushDropped() {
	for _, r := range l.lim.flush(l.now()) {
		_ = l.write(&r) // a loss is counted by write
	}
}

// Close writes the pending audit_dropped records and closes a file sink;
// records logged to a file sink after Close are lost (and counted).
func (l *Logger) Close() error {
	if l == nil {
		return nil
	}
	if l.lim != nil {
		for _, r := range l.lim.stop(l.now()) {
			_ = l.write(&r)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil || l.closed {
		return nil
	}
	l.closed = true
	return l.f.Close()
}
