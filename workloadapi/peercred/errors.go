package peercred

import "errors"

// Sentinel errors.
var (
	// ErrProcessGone: the process that connected has exited; its PID may
	// already belong to another process.
	ErrProcessGone = errors.New("peer process has exited")
	// ErrSocketInUse: a live agent already serves the socket path.
	ErrSocketInUse = errors.New("socket is in use by a live process")
	// ErrUnsafeDir: the socket's directory may be written by other users.
	ErrUnsafeDir = errors.New("socket directory is writable by other users")
)
