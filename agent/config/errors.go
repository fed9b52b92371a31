package config

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error about the content of a config or entries file
// wraps ErrInvalid (and ErrUnknownKey for an unknown key); errors.Is also sees
// the underlying cause, such as selector.ErrInvalid or fs.ErrNotExist for an
// unreadable entries_file.
var (
	// ErrInvalid is wrapped by every "FILE:LINE: ..." error.
	ErrInvalid = errors.New("invalid config")
	// ErrUnknownKey is wrapped by the error for a key the schema lacks.
	ErrUnknownKey = errors.New("unknown key")
	// ErrTooLarge is wrapped when a file is larger than MaxFileSize.
	ErrTooLarge = errors.New("file too large")
)

// posError is an error at a place in a file: "FILE:LINE: FIELD: message",
// "FILE:LINE: message" when it concerns no field, or "FILE: ..." when the
// line is unknown.
type posError struct {
	file  string
	line  int
	field string
	msg   string
	cause error // optional
}

func (e *posError) Error() string {
	where := e.file
	if e.line > 0 {
		where = fmt.Sprintf("%s:%d", e.file, e.line)
	}
	if e.field == "" {
		return where + ": " + e.msg
	}
	return where + ": " + e.field + ": " + e.msg
}

func (e *posError) Unwrap() []error {
	if e.cause == nil {
		return []error{ErrInvalid}
	}
	return []error{ErrInvalid, e.cause}
}
