package jwtpeek

import (
	"encoding/base64"
	"strings"
	"testing"
)

func TestPeek(t *testing.T) {
	enc := base64.RawURLEncoding.EncodeToString
	tok := enc([]byte(`{"alg":"ES256","kid":"k1"}`)) + "." + enc([]byte(`{"jti":"j1"}`)) + ".sig"
	var h struct{ KID string }
	var c struct {
		JTI string `json:"jti"`
	}
	if err := Header(tok, &h); err != nil || h.KID != "k1" {
		t.Fatalf("header: %v %q", err, h.KID)
	}
	if err := Claims(tok, &c); err != nil || c.JTI != "j1" {
		t.Fatalf("claims: %v %q", err, c.JTI)
	}
	for _, bad := range []string{"", "a.b", "!!.e30.x", enc([]byte("{")) + ".e30.x", strings.Repeat("a", maxToken+1)} {
		if err := Header(bad, &h); err == nil {
			t.Errorf("Header(%.20q) accepted", bad)
		}
	}
}
