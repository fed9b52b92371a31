// Package unix is the Unix workload attestor: it turns a PID into selectors
// read from /proc — effective uid and gid, their names, supplementary
// groups, the binary's path and its SHA-256:
//
//	unix:uid:<euid>  unix:gid:<egid>  unix:user:<name>  unix:group:<name>
//	unix:supplementary-gid:<gid>  unix:path:<exe>  unix:sha256:<hex>
//
// Security assumptions:
//   - Everything comes from the kernel (/proc), never from the workload's
//     own environment or arguments. The caller must re-check, after Attest
//     returns, that the PID still belongs to the process it pinned (pidfd):
//     /proc/PID of a process that exited may describe whoever reused the PID.
//   - Selectors describe the process when /proc is read, not when it
//     connected: a process may connect, pass the connection to a child and
//     exec another binary, even a set-user-ID one. The caller must compare
//     unix:uid, unix:gid and the supplementary groups with what the kernel
//     captured at connect, and the binary with the one pinned at accept
//     (peercred.Info.CheckExec), and refuse a mismatch.
//   - The binary is hashed through /proc/PID/exe itself, so a file replaced
//     or modified on disk after exec cannot impersonate the running binary.
//     Hashes are cached by device, inode, size, mtime and ctime; ctime
//     cannot be set by a file's owner, so rewriting a binary in place always
//     changes the key.
//   - unix:path is the target of /proc/PID/exe as the agent sees it. A binary
//     deleted or replaced since exec reads "PATH (deleted)"; it is kept so,
//     and never matches an entry naming the new file's path.
//   - User and group names come from the agent's user database (os/user),
//     which may differ from a container's /etc/passwd; ids are authoritative.
//   - An agent that may not read /proc/PID/exe (another user's process,
//     without privileges) omits path and sha256: entries that need them do
//     not match (fail closed). So do binaries over MaxHashBytes and hashes
//     slower than HashTimeout.
//   - Reads are bounded in size (/proc files) and time (hashing).
package unix

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/nodeward/nodeward/attestors/selector"
)

const (
	// Type is the selector type this attestor produces.
	Type = "unix"

	// DefaultMaxHashBytes is the default Config.MaxHashBytes.
	DefaultMaxHashBytes = 256 << 20
	// DefaultHashTimeout is the default Config.HashTimeout.
	DefaultHashTimeout = 2 * time.Second

	hashCacheSize = 1024
)

// Config configures the attestor. Zero values select the defaults.
type Config struct {
	// ProcRoot is where procfs is mounted (default "/proc").
	ProcRoot string
	// MaxHashBytes: binaries larger than this get no sha256 selector
	// (default DefaultMaxHashBytes, 256 MiB).
	MaxHashBytes int64
	// HashTimeout: a hash that takes longer is abandoned and the sha256
	// selector omitted, logged at warn (default DefaultHashTimeout, 2s).
	HashTimeout time.Duration
	// Logger receives debug and warn records (default: discarded).
	Logger *slog.Logger
}

// Attestor is the Unix workload attestor. It is safe for concurrent use.
type Attestor struct {
	cfg     Config
	log     *slog.Logger
	hashing atomic.Bool
	hashes  *lru.Cache[fileKey, string]
	names   *names
	// hashRun, if set, is called once per hash actually computed (tests).
	hashRun func()
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
		cfg.MaxHashBytes = DefaultMaxHashBytes
	}
	if cfg.HashTimeout <= 0 {
		cfg.HashTimeout = DefaultHashTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c, err := lru.New[fileKey, string](hashCacheSize)
	if err != nil {
		panic(err) // only for a size <= 0
	}
	a := &Attestor{cfg: cfg, log: cfg.Logger, hashes: c, names: newNames()}
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

// Attest returns the selectors of process pid, sorted. A process that does
// not exist gives an error wrapping ErrProcessGone.
func (a *Attestor) Attest(ctx context.Context, pid int32) ([]selector.Selector, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("unix attestor: invalid pid %d", pid)
	}
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
	if n, ok := a.names.lookup(kindUser, uid); ok {
		sels = append(sels, selector.New(Type, "user", n))
	}
	if n, ok := a.names.lookup(kindGroup, gid); ok {
		sels = append(sels, selector.New(Type, "group", n))
	}
	for _, g := range st.Groups {
		sels = append(sels, selector.New(Type, "supplementary-gid", strconv.FormatUint(uint64(g), 10)))
	}
	exe := filepath.Join(dir, "exe")
	path, err := os.Readlink(exe)
	switch {
	case err == nil:
		// Kept as is, " (deleted)" suffix included (see the package doc).
		if p := selector.New(Type, "path", path); valid(p) {
			sels = append(sels, p)
		} else {
			a.log.Debug("unix attestor: binary path cannot be a selector: no path selector", "pid", pid)
		}
		if a.hashing.Load() {
			sum, err := a.hash(ctx, exe, pid)
			if err != nil {
				return nil, fmt.Errorf("unix attestor: pid %d: %w", pid, err)
			}
			if sum != "" {
				sels = append(sels, selector.New(Type, "sha256", sum))
			}
		}
	case errors.Is(err, fs.ErrPermission):
		a.log.Debug("unix attestor: may not read the process's exe: no path or sha256 selectors", "pid", pid)
	case errors.Is(err, fs.ErrNotExist):
		// Kernel threads and zombies have no exe; a process that is gone
		// is caught by the caller's pidfd check.
		a.log.Debug("unix attestor: no exe link: no path or sha256 selectors", "pid", pid)
	default:
		return nil, fmt.Errorf("unix attestor: pid %d: exe: %w", pid, err)
	}
	return selector.Sort(sels), nil
}

// valid reports whether s could be written in configuration (no control
// characters or invalid UTF-8, bounded length): a path that could never
// match an entry is left out rather than carried into logs.
func valid(s selector.Selector) bool {
	_, err := selector.Parse(s.String())
	return err == nil
}
