package tpm

import (
	"bytes"
	"crypto/sha512"
	"encoding/binary"
	"testing"
)

// TestEKPolicyDigests recomputes the TCG EK policy digests used for
// high-range EKs: PolicyA is PolicySecret(TPM_RH_ENDORSEMENT) from a zero
// digest, and PolicyOR(A, C) must be PolicyB, the authPolicy of swtpm's
// P-384 EK (read from the TPM when these constants were checked; the
// activation test proves the session satisfies it).
func TestEKPolicyDigests(t *testing.T) {
	u32 := func(v uint32) []byte { b := make([]byte, 4); binary.BigEndian.PutUint32(b, v); return b }
	h := sha512.New384()
	h.Write(make([]byte, 48))
	h.Write(u32(0x151))      // TPM_CC_PolicySecret
	h.Write(u32(0x4000000B)) // name of TPM_RH_ENDORSEMENT
	inner := h.Sum(nil)
	h.Reset()
	h.Write(inner) // policyRef: empty
	if a := h.Sum(nil); !bytes.Equal(a, ekPolicyASHA384) {
		t.Fatalf("PolicyA = %x, constant %x", a, ekPolicyASHA384)
	}
	h.Reset()
	h.Write(make([]byte, 48))
	h.Write(u32(0x171)) // TPM_CC_PolicyOR
	h.Write(ekPolicyASHA384)
	h.Write(ekPolicyCSHA384)
	want := mustHex("b26e7d28d11a50bc53d882bcf5fd3a1a074148bb35d3b4e4cb1c0ad9bde419cacb47ba09699646150f9fc000f3f80e12")
	if b := h.Sum(nil); !bytes.Equal(b, want) {
		t.Fatalf("PolicyOR(A, C) = %x, want the P-384 EK's authPolicy %x", b, want)
	}
}
