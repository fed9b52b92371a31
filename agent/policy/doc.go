// Package policy holds registration entries, the index that matches a
// caller's selectors against them, and the guardrails (Check) that vet a
// policy before it is loaded.
//
// Security assumptions:
//   - Matching is deny by default: an entry applies only when every one of
//     its selectors is among the caller's, and no match yields nil. An entry
//     without selectors is refused by NewIndex, since it would grant its
//     identity to every process.
//   - The caller's selectors are trusted facts from attestors; entries come
//     from operator configuration and are validated (selectors must be what
//     selector.Parse accepts).
//   - An Index is immutable and safe for concurrent use; a new policy means
//     a new Index, swapped in by the caller.
package policy
