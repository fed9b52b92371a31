package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodeward/nodeward/attestors/selector"
)

// Entry is one registration entry: workloads whose selectors include all of
// Selectors get SPIFFEID. Entries are immutable once passed to NewIndex.
type Entry struct {
	ID        string // stable id: explicit, or derived by EntryID
	SPIFFEID  spiffeid.ID
	Selectors []selector.Selector // all must be present for a match; deduplicated and sorted by NewIndex
	X509TTL   time.Duration
	JWTTTL    time.Duration
	DNSNames  []string
	Hint      string
	Owner     string
	ExpiresAt time.Time // zero: never
	// FederatesWith names the foreign trust domains whose bundles the
	// entry's workloads receive (to authenticate peers there).
	FederatesWith []spiffeid.TrustDomain
	// Revision changes when an entry's source changes it in place (a SPIRE
	// server's revision number); its SVIDs are then re-minted. Zero for
	// local entries, whose changes give a new ID.
	Revision int64
	// Pos is where the entry was configured ("file:line"), for messages.
	Pos string
}

// Expired reports whether the entry has passed its expiry at now.
func (e *Entry) Expired(now time.Time) bool {
	return !e.ExpiresAt.IsZero() && !now.Before(e.ExpiresAt)
}

// EntryID derives a stable id from the SPIFFE ID and the selectors: the hex
// of the first 8 bytes of SHA-256(spiffe id + "\n" + the sorted, distinct
// selector strings joined by "\n"). It does not modify e.
func EntryID(e *Entry) string {
	sels := selector.Strings(normalize(e.Selectors))
	sum := sha256.Sum256([]byte(e.SPIFFEID.String() + "\n" + strings.Join(sels, "\n")))
	return hex.EncodeToString(sum[:8])
}

// normalize returns a sorted copy of sels in canonical spelling (SPIRE's
// aliases mapped, see selector.Canonical) without duplicates.
func normalize(sels []selector.Selector) []selector.Selector {
	c := make([]selector.Selector, len(sels))
	for i, s := range sels {
		c[i] = selector.Canonical(s)
	}
	return slices.Compact(selector.Sort(c))
}
