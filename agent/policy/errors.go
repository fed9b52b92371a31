package policy

import "errors"

// Sentinel errors of NewIndex.
var (
	ErrNilEntry    = errors.New("nil entry")
	ErrNoSelectors = errors.New("entry has no selectors")
	ErrBadSelector = errors.New("entry has an invalid selector")
	ErrNoSPIFFEID  = errors.New("entry has no SPIFFE ID")
	ErrDuplicateID = errors.New("duplicate entry id")
)
