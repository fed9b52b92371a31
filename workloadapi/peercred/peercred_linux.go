// Package peercred identifies the process on the other end of a Unix socket
// connection from kernel-supplied credentials (SO_PEERCRED) and pins it with
// a pidfd (SO_PEERPIDFD on Linux >= 6.5, pidfd_open otherwise), so that a
// process that exits and whose PID is reused can never be taken for another.
//
// Security: nothing here trusts the peer's own words. The pidfd obtained
// through SO_PEERPIDFD refers to the process that connected, whatever
// happened to its PID since; with the pidfd_open fallback there is a short
// window between accept and pidfd_open. CheckAlive must be called after
// reading /proc: a process that exited in between may have had its PID
// reused, so what was read cannot be trusted (fail closed).
package peercred

import (
	"errors"
	"fmt"
	"net"
	"sync"

	"golang.org/x/sys/unix"
)

// Info is what the kernel says about the process on the other end of a
// connection.
type Info struct {
	PID int32
	UID uint32
	GID uint32

	mu     sync.Mutex
	pidfd  int // -1 once closed
	source string
}

// Get reads the peer credentials of c and pins the peer with a pidfd. The
// caller must Close the Info.
func Get(c *net.UnixConn) (*Info, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("peer credentials: %w", err)
	}
	var (
		cred   *unix.Ucred
		pidfd  = -1
		source string
		opErr  error
	)
	err = rc.Control(func(fd uintptr) {
		cred, opErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if opErr != nil {
			return
		}
		pfd, e := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD)
		if e == nil {
			pidfd, source = pfd, "SO_PEERPIDFD"
		} else if !errors.Is(e, unix.ENOPROTOOPT) && !errors.Is(e, unix.EINVAL) {
			opErr = fmt.Errorf("SO_PEERPIDFD: %w", e)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("peer credentials: %w", err)
	}
	if opErr != nil {
		if errors.Is(opErr, unix.ESRCH) {
			return nil, fmt.Errorf("peer credentials: %w", ErrProcessGone)
		}
		return nil, fmt.Errorf("peer credentials: %w", opErr)
	}
	if cred.Pid <= 0 {
		return nil, errors.New("peer credentials: peer has no PID in this namespace")
	}
	if pidfd < 0 {
		pidfd, err = unix.PidfdOpen(int(cred.Pid), unix.PIDFD_NONBLOCK)
		if err != nil {
			if errors.Is(err, unix.ESRCH) {
				return nil, fmt.Errorf("pidfd_open %d: %w", cred.Pid, ErrProcessGone)
			}
			return nil, fmt.Errorf("pidfd_open %d: %w", cred.Pid, err)
		}
		source = "pidfd_open"
	}
	unix.CloseOnExec(pidfd)
	return &Info{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid, pidfd: pidfd, source: source}, nil
}

// CheckAlive returns nil while the process that connected is still running,
// and an error wrapping ErrProcessGone once it has exited (a zombie counts as
// gone: its PID is about to be free).
func (i *Info) CheckAlive() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.pidfd < 0 {
		return fmt.Errorf("pid %d: pidfd closed: %w", i.PID, ErrProcessGone)
	}
	fds := []unix.PollFd{{Fd: int32(i.pidfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("pid %d: poll pidfd: %w", i.PID, err)
		}
		if n > 0 && fds[0].Revents != 0 {
			return fmt.Errorf("pid %d: %w", i.PID, ErrProcessGone)
		}
		return nil
	}
}

// PIDFDSource says how the pidfd was obtained: "SO_PEERPIDFD" or "pidfd_open".
func (i *Info) PIDFDSource() string { return i.source }

// Close releases the pidfd. It is idempotent.
func (i *Info) Close() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.pidfd < 0 {
		return nil
	}
	err := unix.Close(i.pidfd)
	i.pidfd = -1
	if err != nil {
		return fmt.Errorf("close pidfd: %w", err)
	}
	return nil
}
