// Package unix is the Unix workload attestor: it turns a PID into selectors
// read from /proc — effective uid and gid, their names, supplementary groups,
// the binary's path and its SHA-256.
//
// Security: everything comes from the kernel (/proc), never from the
// workload's own environment or arguments. The binary is hashed through
// /proc/PID/exe itself, so a file replaced on disk after exec cannot
// impersonate the running binary. Reads are bounded in size and time. The
// caller must re-check that the PID still belongs to the process it
// pinned (pidfd) after Attest returns.
package unix

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/nodeward/nodeward/attestors/selector"
)

const (
	// Type is the selector type this attestor produces.
	Type = "unix"

	defaultMaxHash  = 256 << 20
	defaultHashTime = 2 * time.Second
	maxStatusBytes  = 64 << 10
	nameTTL         = time.Minute
)

// Config configures the attestor.
type Config struct {
	ProcRoot     string        // default "/proc"
	MaxHashBytes int64         // larger binaries get no sha256 selector (default 256 MiB)
	HashTimeout  time.Duration // a slower hash is abandoned: no sha256 selector (default 2s)
	Logger       *slog.Logger
}

// Attestor is the Unix workload attestor. It is safe for concurrent use.
type Attestor struct {
	cfg     Config
	log     *slog.Logger
	hashing atomic.Bool
	hashes  *lru.Cache[fileKey, string]
	hashRun func() // test hook: called once per hash actually computed

	namesMu sync.Mutex
	names   map[string]cachedName
}

type fileKey struct {
	dev, ino uint64
	size     int64
	mtime    int64
}

type cachedName struct {
	name string
	ok   bool
	at   time.Time
}

var _ interface {
	Attest(context.Context, int32) ([]selector.Selector, error)
} = (*Attestor)(nil)

// New returns an Attestor; hashing starts on.
func New(cfg Config) *Attestor {
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	if cfg.MaxHashBytes <= 0 {
		cfg.MaxHashBytes = defaultMaxHash
	}
	if cfg.HashTimeout <= 0 {
		cfg.HashTimeout = defaultHashTime
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c, _ := lru.New[fileKey, string](1024)
	a := &Attestor{cfg: cfg, log: cfg.Logger, hashes: c, names: make(map[string]cachedName)}
	a.hashing.Store(true)
	return a
}

// Name returns "unix".
func (a *Attestor) Name() string { return Type }

// SetHashing turns the sha256 selector on or off. The agent turns it off
// when no entry uses unix:sha256, so binaries are not hashed for nothing.
func (a *Attestor) SetHashing(on bool) { a.hashing.Store(on) }

// MayBlock reports whether Attest can take long: only while hashing is on
// (a binary not yet in the hash cache is read in full).
func (a *Attestor) MayBlock() bool { return a.hashing.Load() }

// Attest returns the selectors of process pid, sorted.
func (a *Attestor) Attest(ctx context.Context, pid int32) ([]selector.Selector, error) {
	dir := filepath.Join(a.cfg.ProcRoot, strconv.Itoa(int(pid)))
	st, err := readStatus(filepath.Join(dir, "status"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			return nil, fmt.Errorf("unix attestor: pid %d: %w", pid, ErrProcessGone)
		}
		return nil, fmt.Errorf("unix attestor: pid %d: %w", pid, err)
	}
	uid := strconv.FormatUint(uint64(st.UID), 10)
	gid := strconv.FormatUint(uint64(st.GID), 10)
	sels := make([]selector.Selector, 0, 8+len(st.Groups))
	sels = append(sels, selector.New(Type, "uid", uid), selector.New(Type, "gid", gid))
	if n, ok := a.lookup("u", uid); ok {
		sels = append(sels, selector.New(Type, "user", n))
	}
	if n, ok := a.lookup("g", gid); ok {
		sels = append(sels, selector.New(Type, "group", n))
	}
	for _, g := range st.Groups {
		sels = append(sels, selector.New(Type, "supplementary-gid", strconv.FormatUint(uint64(g), 10)))
	}
	exe := filepath.Join(dir, "exe")
	path, err := os.Readlink(exe)
	switch {
	case err == nil:
		// A binary deleted or replaced since exec reads "PATH (deleted)";
		// it is kept as is, so it never matches the new file's path.
		sels = append(sels, selector.New(Type, "path", path))
		if a.hashing.Load() {
			if sum, ok := a.hash(ctx, exe, pid); ok {
				sels = append(sels, selector.New(Type, "sha256", sum))
			}
		}
	case errors.Is(err, fs.ErrPermission):
		a.log.Debug("unix attestor: cannot read exe (no permission): no path or sha256 selectors", "pid", pid)
	case errors.Is(err, fs.ErrNotExist):
		// Kernel threads and zombies have no exe; a vanished process is caught by the pidfd check.
		a.log.Debug("unix attestor: no exe link", "pid", pid)
	default:
		return nil, fmt.Errorf("unix attestor: pid %d: exe: %w", pid, err)
	}
	return selector.Sort(sels), nil
}

// lookup resolves a uid ("u") or gid ("g") to its name, cached for nameTTL.
func (a *Attestor) lookup(kind, id string) (string, bool) {
	key := kind + id
	now := time.Now()
	a.namesMu.Lock()
	c, hit := a.names[key]
	a.namesMu.Unlock()
	if hit && now.Sub(c.at) < nameTTL {
		return c.name, c.ok
	}
	var name string
	var ok bool
	if kind == "u" {
		if u, err := user.LookupId(id); err == nil {
			name, ok = u.Username, true
		}
	} else if g, err := user.LookupGroupId(id); err == nil {
		name, ok = g.Name, true
	}
	a.namesMu.Lock()
	if len(a.names) > 4096 {
		clear(a.names)
	}
	a.names[key] = cachedName{name: name, ok: ok, at: now}
	a.namesMu.Unlock()
	return name, ok
}

// hash returns the hex SHA-256 of the binary behind exe, from the cache when
// the file (device, inode, size, mtime) is unchanged.
func (a *Attestor) hash(ctx context.Context, exe string, pid int32) (string, bool) {
	f, err := os.Open(exe)
	if err != nil {
		a.log.Debug("unix attestor: cannot open exe: no sha256 selector", "pid", pid, "err", err)
		return "", false
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", false
	}
	sys, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "", false
	}
	key := fileKey{dev: sys.Dev, ino: sys.Ino, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if sum, ok := a.hashes.Get(key); ok {
		return sum, true
	}
	if fi.Size() > a.cfg.MaxHashBytes {
		a.log.Warn("unix attestor: binary larger than the hash limit: no sha256 selector",
			"pid", pid, "size", fi.Size(), "limit", a.cfg.MaxHashBytes)
		return "", false
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.HashTimeout)
	defer cancel()
	if a.hashRun != nil {
		a.hashRun()
	}
	h := sha256.New()
	buf := make([]byte, 256<<10)
	r := io.LimitReader(f, a.cfg.MaxHashBytes+1)
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			a.log.Warn("unix attestor: hashing took too long: no sha256 selector", "pid", pid, "err", err)
			return "", false
		}
		m, err := r.Read(buf)
		h.Write(buf[:m])
		n += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			a.log.Debug("unix attestor: read exe", "pid", pid, "err", err)
			return "", false
		}
	}
	if n > a.cfg.MaxHashBytes {
		return "", false
	}
	sum := hex.EncodeToString(h.Sum(nil))
	a.hashes.Add(key, sum)
	return sum, true
}

// statusBufs holds buffers for /proc/PID/status (about 1.5 KiB).
var statusBufs = sync.Pool{New: func() any { b := make([]byte, maxStatusBytes); return &b }}

// readStatus reads /proc/PID/status into a pooled buffer, at most
// maxStatusBytes, and parses it.
func readStatus(path string) (status, error) {
	f, err := os.Open(path)
	if err != nil {
		return status{}, err
	}
	defer f.Close()
	bp := statusBufs.Get().(*[]byte)
	defer statusBufs.Put(bp)
	buf := *bp
	n := 0
	for n < len(buf) {
		m, err := f.Read(buf[n:])
		n += m
		if err == io.EOF || m == 0 {
			break
		}
		if err != nil {
			return status{}, err
		}
	}
	return parseStatus(buf[:n])
}
