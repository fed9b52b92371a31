// Package connlimit wraps the Workload API's net.Listener so that callers
// cannot make the agent hold more connections than configured: a cap for the
// whole listener and one per peer uid (from SO_PEERCRED, read at accept
// before any other work). A connection over a cap is closed at once, before
// the agent opens a pidfd or attests anything, and reported.
//
// Accept errors (EMFILE, ENFILE, ENOBUFS…) are reported, logged at a
// bounded rate, and retried with a backoff: the listener keeps serving when
// the process runs out of file descriptors for a while.
//
// Security: the uid comes from the kernel (SO_PEERCRED of the accepted
// socket), never from the caller. The per-uid cap keeps one uid from taking
// every slot, so callers of other uids (the identified workloads) keep theirs;
// it does not stop many uids acting together, and it does not tell an
// identified caller from one with no identity (that costs an attestation).
package connlimit

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Reasons a connection is refused at accept.
const (
	ReasonMaxConns       = "max_conns"
	ReasonMaxConnsPerUID = "max_conns_per_uid"
	ReasonNoPeerCred     = "no_peer_credentials"
)

// Accept backoff bounds and the interval between two logged accept errors.
const (
	minBackoff  = 5 * time.Millisecond
	maxBackoff  = time.Second
	logInterval = 10 * time.Second
)

// Config configures a Listener.
type Config struct {
	// MaxConns caps the open connections; <= 0: unlimited.
	MaxConns int
	// MaxConnsPerUID caps the open connections of one peer uid; <= 0:
	// unlimited.
	MaxConnsPerUID int
	// Refused is called (if set) for each connection closed at accept, with
	// one of the Reason constants.
	Refused func(reason string)
	// AcceptError is called (if set) for each failed accept, with the kind
	// of error (see Kind).
	AcceptError func(kind string)
	// Logger gets accept errors (at most one line per 10 s) and refusals
	// (likewise); nil: no logging.
	Logger *slog.Logger
	// ReadDelay, if set, is asked before every read from a connection of
	// uid how long to wait first: back-pressure on a caller over its rate
	// budget, whose further requests then wait in its own socket buffer
	// instead of costing the agent CPU to read and refuse.
	ReadDelay func(uid uint32) time.Duration
	// PeerUID returns the peer uid of an accepted connection; nil:
	// SO_PEERCRED. Tests replace it.
	PeerUID func(net.Conn) (uint32, error)
}

// Listener is a net.Listener with connection caps.
type Listener struct {
	net.Listener
	cfg  Config
	log  *slog.Logger
	done chan struct{}
	once sync.Once

	mu      sync.Mutex
	open    int
	perUID  map[uint32]int
	lastLog map[string]time.Time // by message kind
	quiet   map[string]int       // suppressed since the last line, by kind
}

var _ net.Listener = (*Listener)(nil)

// New wraps l.
func New(l net.Listener, cfg Config) *Listener {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.PeerUID == nil {
		cfg.PeerUID = peerUID
	}
	if cfg.Refused == nil {
		cfg.Refused = func(string) {}
	}
	if cfg.AcceptError == nil {
		cfg.AcceptError = func(string) {}
	}
	return &Listener{Listener: l, cfg: cfg, log: cfg.Logger, done: make(chan struct{}),
		perUID: make(map[uint32]int), lastLog: make(map[string]time.Time), quiet: make(map[string]int)}
}

// Accept returns the next connection within the caps. Connections over a
// cap are closed and reported; accept errors other than a closed listener
// are reported and retried after a backoff.
func (l *Listener) Accept() (net.Conn, error) {
	backoff := time.Duration(0)
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil, err
			}
			kind := Kind(err)
			l.cfg.AcceptError(kind)
			l.logf("accept:"+kind, "workload API accept failed; retrying", "kind", kind, "err", err)
			backoff = min(max(2*backoff, minBackoff), maxBackoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-l.done:
				t.Stop()
				return nil, net.ErrClosed
			}
			continue
		}
		backoff = 0
		if lc, ok := l.admit(c); ok {
			return lc, nil
		}
	}
}

// admit counts c against the caps, or closes it and reports why.
func (l *Listener) admit(c net.Conn) (net.Conn, bool) {
	uid, err := l.cfg.PeerUID(c)
	reason := ReasonNoPeerCred
	if err == nil {
		l.mu.Lock()
		switch {
		case l.cfg.MaxConns > 0 && l.open >= l.cfg.MaxConns:
			reason = ReasonMaxConns
		case l.cfg.MaxConnsPerUID > 0 && l.perUID[uid] >= l.cfg.MaxConnsPerUID:
			reason = ReasonMaxConnsPerUID
		default:
			l.open++
			l.perUID[uid]++
			l.mu.Unlock()
			return &conn{Conn: c, l: l, uid: uid, closed: make(chan struct{})}, true
		}
		l.mu.Unlock()
	}
	// Counted before the close, so that by the time the peer reads EOF the
	// refusal is in the metrics.
	l.cfg.Refused(reason)
	_ = c.Close() // refused: nothing was read or written
	l.logf("refused:"+reason, "workload API connection refused", "reason", reason, "uid", uid)
	return nil, false
}

func (l *Listener) release(uid uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.perUID[uid]--; l.perUID[uid] <= 0 {
		delete(l.perUID, uid)
	}
}

// Open returns the connections open now, in all and of uid.
func (l *Listener) Open(uid uint32) (all, ofUID int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open, l.perUID[uid]
}

// Close closes the listener and ends a pending accept backoff.
func (l *Listener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// logf logs at most one line per logInterval and kind, with the number of
// lines suppressed since the last one.
func (l *Listener) logf(kind, msg string, args ...any) {
	now := time.Now()
	l.mu.Lock()
	if now.Sub(l.lastLog[kind]) < logInterval {
		l.quiet[kind]++
		l.mu.Unlock()
		return
	}
	l.lastLog[kind] = now
	n := l.quiet[kind]
	delete(l.quiet, kind)
	l.mu.Unlock()
	l.log.Warn(msg, append(args, "suppressed", n)...)
}

// conn releases its slot once, on the first Close.
type conn struct {
	net.Conn
	l      *Listener
	uid    uint32
	once   sync.Once
	closed chan struct{}
}

// Read waits for the configured read delay (or until the conn is closed),
// then reads.
func (c *conn) Read(p []byte) (int, error) {
	if c.l.cfg.ReadDelay != nil {
		if d := c.l.cfg.ReadDelay(c.uid); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-c.closed:
				t.Stop()
			}
		}
	}
	return c.Conn.Read(p)
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		close(c.closed)
		c.l.release(c.uid)
	})
	return err
}

// UnixConn returns the wrapped Unix connection (for peer credentials), or
// nil.
func (c *conn) UnixConn() *net.UnixConn {
	uc, _ := c.Conn.(*net.UnixConn)
	return uc
}
