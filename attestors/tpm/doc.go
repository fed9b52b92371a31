// Package tpm is nodeward's TPM 2.0 node attestation: it reads the
// endorsement key (EK) and its certificate, verifies the EK certificate
// chain against manufacturer roots, quotes PCRs with an attestation key
// (AK) and verifies quotes in software, runs credential activation
// (MakeCredential in software, ActivateCredential in the TPM) to bind the AK
// to the EK, and holds a non-exportable signing key for the agent's CA.
// The CLI (`nodeward node attest|verify`) and the agent are thin faces of
// this package; a remote verifier uses Attest, Verify, NewChallenge and
// CheckActivation over its own transport.
//
// Security assumptions:
//   - One *TPM owns the device: every command runs under its lock (a TPM
//     without a resource manager holds three transient objects), every
//     transient object it loads is flushed before the lock is released,
//     TPM_RC_RETRY is retried, and callers wait at most their context's
//     deadline (or DefaultTimeout).
//   - Nothing the TPM returns is believed without a check in software:
//     quotes are verified (signature by the AK, TPM_GENERATED magic, quote
//     type, nonce, PCR selection and PCR digest) before PCR values are used.
//   - The AK is bound to the EK only through credential activation: a
//     verifier that skips NewChallenge/CheckActivation trusts an AK that any
//     TPM (or software) could have made.
//   - An EK without a certificate, or one whose chain does not verify
//     against the configured roots, yields an EK hash but no EK CA: tpm:ek-ca
//     selectors exist only for verified chains.
package tpm
