package peercred

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nodeward/nodeward/internal/safefs"
)

// probeTimeout bounds the dial that tells a live socket from a stale one.
const probeTimeout = time.Second

// Listen prepares path for a Workload API socket and listens on it:
//   - the parent directory is created 0755 when missing; one that is group-
//     or other-writable, or owned by someone other than the effective user
//     or root (or is a symlink owned by someone else), or has such a
//     directory anywhere above it (sticky ones like /tmp excepted), is
//     refused with ErrUnsafeDir: only the agent's user may place or replace
//     the socket;
//   - an existing path must be a socket; it is dial-probed: a live listener
//     gives ErrSocketInUse (a live agent's socket is never stolen), a refused
//     connection means a stale socket left by a crashed agent, which is
//     removed;
//   - the socket is made 0777: every local user may connect, and
//     attestation, not file modes, decides who gets which identity.
//
// Closing the listener removes the socket file.
func Listen(path string) (*net.UnixListener, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("socket %s: path must be absolute", path)
	}
	path = filepath.Clean(path)
	if err := prepareDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o777); err != nil {
		if cerr := l.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		return nil, fmt.Errorf("chmod socket %s: %w", path, err)
	}
	return l, nil
}

// prepareDir creates dir (0755) if missing and checks that only we or root
// can write it. A directory someone else created in the meantime is checked
// like any existing one, never adopted.
func prepareDir(dir string) error {
	err := os.Mkdir(dir, 0o755)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return fmt.Errorf("socket directory %s: %w", dir, err)
		}
		err = os.Mkdir(dir, 0o755)
	}
	switch {
	case err == nil:
		// Mkdir is subject to the umask; make the mode exact.
		if err := os.Chmod(dir, 0o755); err != nil {
			return fmt.Errorf("socket directory %s: %w", dir, err)
		}
	case !errors.Is(err, fs.ErrExist):
		return fmt.Errorf("socket directory %s: %w", dir, err)
	}
	return checkDir(dir)
}

// checkDir refuses a socket directory that users other than us or root may
// change: the directory and every directory above it must pass
// safefs.CheckDir (owned by root or us, not writable by group or others;
// sticky directories such as /tmp allowed above it), since whoever can
// write any of them can rename the directory away and put one holding a
// fake socket in its place. A symlinked directory must also be owned by us
// or root: whoever owns the link can swap it when it lives in a sticky
// directory.
func checkDir(dir string) error {
	lst, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("socket directory %s: %w", dir, err)
	}
	if lst.Mode().Type() == fs.ModeSymlink {
		if err := checkOwner(dir, lst); err != nil {
			return fmt.Errorf("socket directory %s is a symlink: %w", dir, err)
		}
	}
	if err := safefs.CheckDir(dir); err != nil {
		if errors.Is(err, safefs.ErrUnsafe) {
			return fmt.Errorf("socket directory %s: %w: %w", dir, ErrUnsafeDir, err)
		}
		return fmt.Errorf("socket directory %s: %w", dir, err)
	}
	return nil
}

func checkOwner(name string, fi fs.FileInfo) error {
	sys, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("socket directory %s: cannot tell its owner: %w", name, ErrUnsafeDir)
	}
	if sys.Uid != 0 && int(sys.Uid) != os.Geteuid() {
		return fmt.Errorf("socket directory %s is owned by uid %d: %w", name, sys.Uid, ErrUnsafeDir)
	}
	return nil
}

// removeStale removes a socket at path that nobody listens on.
func removeStale(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("socket %s: %w", path, err)
	}
	if st.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("socket %s: exists and is not a socket; refusing to replace it", path)
	}
	c, err := net.DialTimeout("unix", path, probeTimeout)
	if err == nil {
		if cerr := c.Close(); cerr != nil {
			return fmt.Errorf("socket %s: %w (closing the probe: %v)", path, ErrSocketInUse, cerr)
		}
		return fmt.Errorf("socket %s: %w", path, ErrSocketInUse)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		// Anything else (a full backlog, EACCES…) may be a live agent.
		return fmt.Errorf("socket %s: probe: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}
