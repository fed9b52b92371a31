package federation

import (
	"testing"
)

// FuzzParseBootstrap: any input either is refused with ErrBadBundle or
// yields a bundle of the trust domain with at least one X.509 authority.
func FuzzParseBootstrap(f *testing.F) {
	f.Add([]byte(`{"keys":[]}`))
	f.Add([]byte(`{"keys":[{"use":"x509-svid","kty":"EC","x5c":["AAAA"]}],"spiffe_sequence":1,"spiffe_refresh_hint":60}`))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := parseBootstrap(tdB, data)
		if err != nil {
			return
		}
		if b.TrustDomain() != tdB || len(b.X509Authorities()) == 0 {
			t.Fatalf("accepted %q as %v", data, b)
		}
		if err := checkBundle(tdB, b); err != nil {
			t.Fatalf("accepted a bundle checkBundle refuses: %v", err)
		}
	})
}
