package connlimit

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// peerUID reads the peer uid of a Unix connection with SO_PEERCRED (no file
// descriptor is opened).
func peerUID(c net.Conn) (uint32, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, fmt.Errorf("connlimit: %T has no socket", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("connlimit: %w", err)
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, fmt.Errorf("connlimit: %w", err)
	}
	if serr != nil {
		return 0, fmt.Errorf("connlimit: SO_PEERCRED: %w", serr)
	}
	return cred.Uid, nil
}

// Kind names an accept error for metrics: emfile (the process is out of
// file descriptors), enfile (the system is), enobufs, enomem, econnaborted,
// or other.
func Kind(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case unix.EMFILE:
			return "emfile"
		case unix.ENFILE:
			return "enfile"
		case unix.ENOBUFS:
			return "enobufs"
		case unix.ENOMEM:
			return "enomem"
		case unix.ECONNABORTED:
			return "econnaborted"
		}
	}
	return "other"
}
