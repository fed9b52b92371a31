//go:build !linux

package peercred

import (
	"fmt"
	"net"
)

// PIDFD sources reported by Info.PIDFDSource.
const (
	SourcePeerPIDFD = "SO_PEERPIDFD" // the kernel's reference to the connecting process
	SourcePidfdOpen = "pidfd_open"   // opened by PID after accept (kernel < 6.5)
)

// Info is what the kernel says about the process on the other end of a
// connection. PID, UID and GID (effective ids) are those the peer had when
// it called connect(2) (or socketpair(2)); the process may have changed
// its ids or exec'd another binary since. Outside Linux no Info is ever produced.
type Info struct {
	PID         int32
	UID         uint32
	GID         uint32
	Groups      []uint32
	GroupsKnown bool
}

// Get is only implemented on Linux; elsewhere it returns ErrUnsupported.
func Get(*net.UnixConn) (*Info, error) {
	return nil, fmt.Errorf("peer credentials: %w", ErrUnsupported)
}

// CheckAlive always reports the process as gone outside Linux (fail closed).
func (i *Info) CheckAlive() error {
	return fmt.Errorf("pid %d: %w (%w)", i.PID, ErrProcessGone, ErrUnsupported)
}

// CheckExec always fails outside Linux (fail closed).
func (i *Info) CheckExec() error {
	return fmt.Errorf("pid %d: %w (%w)", i.PID, ErrExecChanged, ErrUnsupported)
}

// PIDFDSource returns "" outside Linux.
func (*Info) PIDFDSource() string { return "" }

// Close does nothing outside Linux.
func (*Info) Close() error { return nil }
