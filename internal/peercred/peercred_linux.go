package peercred

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PIDFD sources reported by Info.PIDFDSource.
const (
	SourcePeerPIDFD = "SO_PEERPIDFD" // the kernel's reference to the connecting process
	SourcePidfdOpen = "pidfd_open"   // opened by PID after accept (kernel < 6.5)
)

// Info is what the kernel says about the process on the other end of a
// connection. PID, UID and GID (effective ids) are those the peer had when
// it called connect(2) (or socketpair(2)); the process may have changed
// its ids or exec'd another binary since.
type Info struct {
	PID int32
	UID uint32
	GID uint32
	// Groups are the peer's supplementary groups at connect (SO_PEERGROUPS),
	// sorted and without duplicates; GroupsKnown is false where the kernel could not say.
	Groups      []uint32
	GroupsKnown bool

	mu     sync.Mutex
	pidfd  int // -1 once closed
	source string
	// exe identifies the binary the peer ran when the connection was
	// accepted (device and inode of /proc/PID/exe); exeKnown is false when
	// it could not be read (an unprivileged agent and another user's peer).
	exe      fileID
	exeKnown bool
}

// fileID names a file independently of its path.
type fileID struct{ dev, ino uint64 }

// Get reads the peer credentials of c (SO_PEERCRED) and pins the peer with
// a pidfd: SO_PEERPIDFD where the kernel has it (>= 6.5), pidfd_open(PID)
// otherwise. A peer that has already exited gives an error wrapping
// ErrProcessGone. The caller must Close the Info.
func Get(c *net.UnixConn) (*Info, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("peer credentials: %w", err)
	}
	var (
		cred             *unix.Ucred
		pidfd            = -1
		credErr, pfdErr  error
		groups           []uint32
		groupsErr        error
		supportsPeerPFDs = peerPIDFDSupported()
	)
	err = rc.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if credErr != nil {
			return
		}
		groups, groupsErr = peerGroups(int(fd))
		if v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD); err == nil {
			pidfd = v
		} else {
			pfdErr = err
		}
	})
	if err != nil {
		return nil, fmt.Errorf("peer credentials: %w", err)
	}
	if credErr != nil {
		return nil, fmt.Errorf("peer credentials: SO_PEERCRED: %w", credErr)
	}
	fallback, err := classifyPeerPIDFD(pfdErr, supportsPeerPFDs)
	if err != nil {
		return nil, fmt.Errorf("peer credentials of pid %d: SO_PEERPIDFD: %w", cred.Pid, err)
	}
	if cred.Pid <= 0 {
		if pidfd >= 0 {
			_ = unix.Close(pidfd) // nothing to report: the Info is not returned
		}
		return nil, errors.New("peer credentials: the peer has no PID in this PID namespace")
	}
	source := SourcePeerPIDFD
	if fallback {
		// The connecting process may have exited and its PID been reused
		// between connect and here; SO_PEERPIDFD has no such window.
		pidfd, err = unix.PidfdOpen(int(cred.Pid), 0)
		if err != nil {
			if errors.Is(err, unix.ESRCH) {
				return nil, fmt.Errorf("pidfd_open %d: %w", cred.Pid, ErrProcessGone)
			}
			return nil, fmt.Errorf("pidfd_open %d: %w", cred.Pid, err)
		}
		source = SourcePidfdOpen
	}
	// Both SO_PEERPIDFD and pidfd_open return close-on-exec descriptors.
	info := &Info{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid, Groups: groups, GroupsKnown: groupsErr == nil,
		pidfd: pidfd, source: source}
	// Pin the binary now, as close to connect as the agent can: a later
	// RPC from a process that has exec'd since is refused (CheckExec).
	info.exe, info.exeKnown = exeID(info.PID)
	if err := info.CheckAlive(); err != nil {
		// The PID may have been reused while /proc/PID/exe was read.
		_ = info.Close() // the error that matters is err
		return nil, err
	}
	return info, nil
}

// exeID stats /proc/PID/exe (the binary itself, whatever its path).
func exeID(pid int32) (fileID, bool) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/"+strconv.Itoa(int(pid))+"/exe", &st); err != nil {
		return fileID{}, false
	}
	return fileID{dev: st.Dev, ino: st.Ino}, true
}

// maxGroups bounds SO_PEERGROUPS (NGROUPS_MAX is 65536).
const maxGroups = 65536

// peerGroups reads the supplementary groups the peer had at connect.
func peerGroups(fd int) ([]uint32, error) {
	n := 32
	for {
		buf := make([]uint32, n)
		size := uint32(4 * n)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		switch {
		case errno == 0:
			g := buf[:size/4]
			slices.Sort(g)
			return slices.Clip(slices.Compact(g)), nil
		case errno == unix.ERANGE && int(size/4) > n && int(size/4) <= maxGroups:
			n = int(size / 4)
		default:
			return nil, fmt.Errorf("SO_PEERGROUPS: %w", errno)
		}
	}
}

// CheckExec returns an error wrapping ErrExecChanged when the process now
// runs another binary than when its connection was accepted: it has exec'd,
// and may be a target binary run by a process that handed the connection
// to someone else. An Info whose binary could not be read at accept is
// refused once it can be read (fail closed).
func (i *Info) CheckExec() error {
	now, ok := exeID(i.PID)
	switch {
	case !ok && !i.exeKnown:
		return nil
	case !ok:
		// An exited process has no binary any more: say so precisely.
		if err := i.CheckAlive(); err != nil {
			return err
		}
		return fmt.Errorf("pid %d: %w (its binary can no longer be read)", i.PID, ErrExecChanged)
	case !i.exeKnown || now != i.exe:
		return fmt.Errorf("pid %d: %w", i.PID, ErrExecChanged)
	}
	return nil
}

// classifyPeerPIDFD interprets the result of getsockopt(SO_PEERPIDFD):
// fallback is true when the kernel does not offer the option and the pidfd
// must be opened by PID. supported says whether this kernel was seen to
// support SO_PEERPIDFD: there, EINVAL (kernels 6.5 to 6.14) and ESRCH (later)
// both mean the peer has already been reaped, and falling back to
// pidfd_open(PID) could pin whatever process reuses its PID.
func classifyPeerPIDFD(err error, supported bool) (fallback bool, _ error) {
	switch {
	case err == nil:
		return false, nil
	case errors.Is(err, unix.ESRCH):
		return false, ErrProcessGone
	case errors.Is(err, unix.EINVAL) && supported:
		return false, fmt.Errorf("%w (%v)", ErrProcessGone, err)
	case errors.Is(err, unix.ENOPROTOOPT), errors.Is(err, unix.EINVAL):
		return true, nil
	default:
		return false, err
	}
}

// peerPIDFDSupported probes once, on a socket pair of our own, whether the
// kernel supports SO_PEERPIDFD.
var peerPIDFDSupported = sync.OnceValue(func() bool {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	pidfd, err := unix.GetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_PEERPIDFD)
	if err != nil {
		return false
	}
	_ = unix.Close(pidfd) // a probe: only success matters
	return true
})

// CheckAlive returns nil while the process that connected is still running,
// and an error wrapping ErrProcessGone once it has exited (a zombie counts as
// gone: its PID is about to be free) or once the Info is closed.
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
		// POLLIN: exited; POLLHUP: reaped; POLLNVAL cannot happen while
		// mu is held, and would count as gone too (fail closed).
		if n > 0 && fds[0].Revents != 0 {
			return fmt.Errorf("pid %d: %w", i.PID, ErrProcessGone)
		}
		return nil
	}
}

// PIDFDSource says how the pidfd was obtained: SourcePeerPIDFD
// ("SO_PEERPIDFD") or SourcePidfdOpen ("pidfd_open").
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
		return fmt.Errorf("close pidfd of pid %d: %w", i.PID, err)
	}
	return nil
}
