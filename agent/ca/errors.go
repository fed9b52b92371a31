package ca

import "errors"

// Sentinel errors. Every error LoadOrCreate and the Mint methods return wraps
// one of these (or an I/O or crypto error from the standard library), so a
// caller can tell configuration problems from transient ones with errors.Is.
var (
	// ErrInvalidConfig: Config lacks a trust domain or data directory, or
	// has a negative RootTTL.
	ErrInvalidConfig = errors.New("invalid CA config")
	// ErrUnsafeFile: the data directory or a directory above it is owned
	// by another user or writable by group or others, or a key or
	// certificate file is a symlink, owned by another user, or open to
	// others (a key: readable or writable by anyone but its owner).
	ErrUnsafeFile = errors.New("file permissions too open")
	// ErrCorruptFile: a key or certificate file cannot be parsed, holds the
	// wrong kind of key, or does not belong with the other files, or a key
	// is missing beside the other half of its pair.
	ErrCorruptFile = errors.New("corrupt CA file")
	// ErrTrustDomainMismatch: the stored root belongs to another trust
	// domain than the configured one.
	ErrTrustDomainMismatch = errors.New("trust domain mismatch")
	// ErrBadTTL: a lifetime is zero or negative.
	ErrBadTTL = errors.New("ttl must be positive")
	// ErrBadID: the SPIFFE ID is zero, has no path, or is outside the CA's
	// trust domain.
	ErrBadID = errors.New("invalid SPIFFE ID for an SVID")
	// ErrBadDNSName: a DNS SAN is not a valid host name.
	ErrBadDNSName = errors.New("invalid DNS name")
	// ErrBadAudience: a JWT-SVID audience list is empty or has an empty
	// member.
	ErrBadAudience = errors.New("invalid JWT-SVID audience")
	// ErrIssuerExpiring: the issuer (a TPM-signed intermediate that could
	// not be renewed) has less than MinLeafLife left, so any leaf would be
	// expired or nearly so; nothing is minted until it is renewed.
	ErrIssuerExpiring = errors.New("CA issuer expired or about to expire")
)
