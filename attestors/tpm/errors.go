package tpm

import "errors"

// Sentinel errors; every error of this package that means one of these
// wraps it.
var (
	// ErrOpen: the TPM could not be opened or does not answer.
	ErrOpen = errors.New("tpm: cannot open")
	// ErrTimeout: a TPM operation did not finish within its deadline.
	ErrTimeout = errors.New("tpm: operation timed out")
	// ErrNoEK: the TPM has no endorsement key to use.
	ErrNoEK = errors.New("tpm: no endorsement key")
	// ErrEKChain: the EK certificate does not verify against the roots.
	ErrEKChain = errors.New("tpm: EK certificate chain not verified")
	// ErrQuote: a quote failed verification (signature, nonce, PCRs).
	ErrQuote = errors.New("tpm: quote verification failed")
	// ErrActivation: credential activation failed or answered wrongly.
	ErrActivation = errors.New("tpm: credential activation failed")
	// ErrEvidence: an evidence document is malformed or inconsistent.
	ErrEvidence = errors.New("tpm: bad evidence")
	// ErrUnsupported: the TPM's keys are of a kind this package cannot use.
	ErrUnsupported = errors.New("tpm: unsupported")
)
