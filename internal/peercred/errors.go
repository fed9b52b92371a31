package peercred

import "errors"

// Sentinel errors.
var (
	// ErrProcessGone: the process that connected has exited (or its pidfd
	// was closed); its PID may already belong to another process.
	ErrProcessGone = errors.New("peer process has exited")
	// ErrExecChanged: the peer runs another binary than when it connected.
	ErrExecChanged = errors.New("peer process has exec'd since connect")
	// ErrSocketInUse: a live process already listens on the socket path.
	ErrSocketInUse = errors.New("socket is in use by a live process")
	// ErrUnsafeDir: the socket's directory may be written by users other
	// than the agent's (or root).
	ErrUnsafeDir = errors.New("socket directory is writable by other users")
	// ErrUnsupported: peer credentials are only implemented on Linux.
	ErrUnsupported = errors.New("peer credentials are not supported on this system")
)
