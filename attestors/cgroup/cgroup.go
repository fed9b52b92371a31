// Package cgroup is the cgroup workload attestor: it reads /proc/PID/cgroup
// and derives selectors for the systemd unit and slice (system and user
// managers), the container (id and runtime) and the Kubernetes pod (UID and
// QoS class) the process runs in, plus the raw cgroup path.
//
// Security: a process cannot move itself to another cgroup without write
// access to the cgroup tree (root, or a subtree delegated to its user, as
// systemd does for user@UID.service: a user may move its own processes
// between its own user units, so user-unit selectors only separate a user
// from other users). Nothing the process says about itself (environment,
// argv, hostname) is read. /proc reads are bounded in size.
package cgroup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"

	"github.com/nodeward/nodeward/attestors/selector"
)

// Sentinel errors.
var (
	// ErrMalformed: /proc/PID/cgroup could not be parsed.
	ErrMalformed = errors.New("malformed /proc cgroup file")
	// ErrProcessGone: the process no longer exists.
	ErrProcessGone = errors.New("process is gone")
)

const maxCgroupFile = 16 << 10

// Config configures the attestor.
type Config struct {
	ProcRoot string // default "/proc"
}

// Attestor is the cgroup workload attestor. It is safe for concurrent use.
type Attestor struct {
	procRoot string
}

var _ interface {
	Attest(context.Context, int32) ([]selector.Selector, error)
} = (*Attestor)(nil)

// New returns an Attestor.
func New(cfg Config) *Attestor {
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	return &Attestor{procRoot: cfg.ProcRoot}
}

// Name returns "cgroup".
func (a *Attestor) Name() string { return "cgroup" }

var bufs = sync.Pool{New: func() any { b := make([]byte, maxCgroupFile); return &b }}

// Attest returns the selectors derived from the cgroup membership of pid.
func (a *Attestor) Attest(_ context.Context, pid int32) ([]selector.Selector, error) {
	p := filepath.Join(a.procRoot, strconv.Itoa(int(pid)), "cgroup")
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			return nil, fmt.Errorf("cgroup attestor: pid %d: %w", pid, ErrProcessGone)
		}
		return nil, fmt.Errorf("cgroup attestor: pid %d: %w", pid, err)
	}
	defer f.Close()
	bp := bufs.Get().(*[]byte)
	defer bufs.Put(bp)
	buf := *bp
	n := 0
	for n < len(buf) {
		m, err := f.Read(buf[n:])
		n += m
		if err == io.EOF || m == 0 {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("cgroup attestor: pid %d: %w", pid, err)
		}
	}
	if n == len(buf) {
		return nil, fmt.Errorf("cgroup attestor: pid %d: %w: larger than %d bytes", pid, ErrMalformed, maxCgroupFile)
	}
	lines, err := ParseProcCgroup(buf[:n])
	if err != nil {
		return nil, fmt.Errorf("cgroup attestor: pid %d: %w", pid, err)
	}
	return Selectors(SystemdPath(lines)), nil
}
