package unix

import "errors"

// Sentinel errors.
var (
	// ErrProcessGone: the process no longer exists.
	ErrProcessGone = errors.New("process is gone")
	// ErrMalformed: /proc/PID/status could not be parsed.
	ErrMalformed = errors.New("malformed /proc status")
)
