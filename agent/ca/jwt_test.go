package ca

import (
	"crypto/ecdsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
)

// decodeSegment decodes one base64url segment of a compact JWS into v.
func decodeSegment(t *testing.T, seg string, v any) {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		t.Fatalf("segment is not unpadded base64url: %v", err)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatalf("segment is not JSON: %v", err)
	}
}

func TestJWTSVID(t *testing.T) {
	clock := &fakeClock{now: time.Now()}
	c := newCA(t, dataDir(t), clock.Now)
	now := clock.Now()
	j, err := c.MintJWTSVID(webID, []string{"a", "b"}, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if want := now.Add(5 * time.Minute).Truncate(time.Second); !j.ExpiresAt.Equal(want) {
		t.Errorf("ExpiresAt = %v, want %v", j.ExpiresAt, want)
	}
	// go-spiffe validates it for either audience.
	for _, aud := range []string{"a", "b"} {
		svid, err := jwtsvid.ParseAndValidate(j.Token, c.Bundle(), []string{aud})
		if err != nil {
			t.Fatalf("ParseAndValidate(aud %q): %v", aud, err)
		}
		if svid.ID != webID || strings.Join(svid.Audience, ",") != "a,b" || !svid.Expiry.Equal(j.ExpiresAt) {
			t.Errorf("svid = %v %v %v", svid.ID, svid.Audience, svid.Expiry)
		}
	}
	if _, err := jwtsvid.ParseAndValidate(j.Token, c.Bundle(), []string{"c"}); err == nil {
		t.Error("wrong audience accepted")
	}

	parts := strings.Split(j.Token, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d segments", len(parts))
	}
	var hdr map[string]any
	decodeSegment(t, parts[0], &hdr)
	if len(hdr) != 3 || hdr["alg"] != "ES256" || hdr["typ"] != "JWT" || hdr["kid"] != c.JWTKeyID() {
		t.Errorf("header = %v", hdr)
	}
	var claims map[string]any
	decodeSegment(t, parts[1], &claims)
	aud, _ := claims["aud"].([]any)
	if claims["sub"] != webID.String() || len(aud) != 2 || aud[0] != "a" || aud[1] != "b" ||
		claims["exp"] != float64(j.ExpiresAt.Unix()) || claims["iat"] != float64(now.Unix()) || claims["jti"] != j.JTI {
		t.Errorf("claims = %v", claims)
	}
	if _, ok := claims["iss"]; ok {
		t.Error("iss set without a configured issuer")
	}
	if len(j.JTI) != 32 {
		t.Errorf("jti %q, want 32 hex characters", j.JTI)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		t.Errorf("signature is %d bytes (%v), want fixed-size r||s of 64", len(sig), err)
	}

	// Expired: minted two hours ago with a one-minute lifetime.
	clock.Set(now.Add(-2 * time.Hour))
	expired, err := c.MintJWTSVID(webID, []string{"a"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(expired.Token, c.Bundle(), []string{"a"}); err == nil {
		t.Error("expired token accepted")
	}
	// A token from another CA (same trust domain, other key) is refused.
	other := newCA(t, dataDir(t), nil)
	if _, err := jwtsvid.ParseAndValidate(j.Token, other.Bundle(), []string{"a"}); err == nil {
		t.Error("token verified with another CA's bundle")
	}
}

func TestJWTSVIDDistinctJTI(t *testing.T) {
	c := newCA(t, dataDir(t), nil)
	a, err := c.MintJWTSVID(webID, []string{"a"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.MintJWTSVID(webID, []string{"a"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if a.JTI == b.JTI || a.Token == b.Token {
		t.Error("two tokens share a jti or are identical")
	}
}

func TestJWTIssuer(t *testing.T) {
	c, err := LoadOrCreate(Config{TrustDomain: td, Dir: dataDir(t), JWTIssuer: "https://oidc.example.org"})
	if err != nil {
		t.Fatal(err)
	}
	j, err := c.MintJWTSVID(webID, []string{"a"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	decodeSegment(t, strings.Split(j.Token, ".")[1], &claims)
	if claims["iss"] != "https://oidc.example.org" || c.JWTIssuer() != "https://oidc.example.org" {
		t.Errorf("iss = %v", claims["iss"])
	}
	if _, err := jwtsvid.ParseAndValidate(j.Token, c.Bundle(), []string{"a"}); err != nil {
		t.Errorf("ParseAndValidate with iss: %v", err)
	}
}

func TestMintJWTSVIDRefusesBadInput(t *testing.T) {
	c := newCA(t, dataDir(t), nil)
	tests := []struct {
		name string
		id   spiffeid.ID
		aud  []string
		ttl  time.Duration
		want error
	}{
		{"no audience", webID, nil, time.Minute, ErrBadAudience},
		{"empty audience member", webID, []string{"a", ""}, time.Minute, ErrBadAudience},
		{"zero ttl", webID, []string{"a"}, 0, ErrBadTTL},
		{"sub-second ttl", webID, []string{"a"}, 500 * time.Millisecond, ErrBadTTL},
		{"zero ID", spiffeid.ID{}, []string{"a"}, time.Minute, ErrBadID},
		{"trust domain ID", td.ID(), []string{"a"}, time.Minute, ErrBadID},
		{"foreign trust domain", spiffeid.RequireFromString("spiffe://other.org/x"), []string{"a"}, time.Minute, ErrBadID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j, err := c.MintJWTSVID(tt.id, tt.aud, tt.ttl)
			if !errors.Is(err, tt.want) || j != nil {
				t.Fatalf("MintJWTSVID = %v, %v; want %v", j, err, tt.want)
			}
		})
	}
}

type jwksDoc struct {
	Keys []map[string]string `json:"keys"`
}

func TestJWKS(t *testing.T) {
	c := newCA(t, dataDir(t), nil)
	kid := c.JWTKeyID()
	if len(kid) != 32 || strings.ContainsAny(kid, "+/=") {
		t.Errorf("kid %q: want 32 base64url characters, unpadded", kid)
	}
	pub, ok := c.Bundle().FindJWTAuthority(kid)
	if !ok {
		t.Fatal("bundle has no JWT authority for the kid")
	}
	tests := []struct {
		name     string
		doc      []byte
		use, alg string
	}{
		{"JWKS", c.JWKS(), "jwt-svid", ""},
		{"OIDCJWKS", c.OIDCJWKS(), "sig", "ES256"},
	}
	for _, tt := range tests {
		var doc jwksDoc
		if err := json.Unmarshal(tt.doc, &doc); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if len(doc.Keys) != 1 {
			t.Fatalf("%s: %d keys", tt.name, len(doc.Keys))
		}
		k := doc.Keys[0]
		if k["kty"] != "EC" || k["crv"] != "P-256" || k["kid"] != kid || k["use"] != tt.use || k["alg"] != tt.alg {
			t.Errorf("%s: key %v", tt.name, k)
		}
		x, errX := base64.RawURLEncoding.DecodeString(k["x"])
		y, errY := base64.RawURLEncoding.DecodeString(k["y"])
		raw, err := pub.(*ecdsa.PublicKey).Bytes()
		if errX != nil || errY != nil || err != nil || string(raw[1:33]) != string(x) || string(raw[33:]) != string(y) {
			t.Errorf("%s: x/y are not the bundle's key", tt.name)
		}
	}
	j, err := c.MintJWTSVID(webID, []string{"a"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var hdr map[string]string
	decodeSegment(t, strings.Split(j.Token, ".")[0], &hdr)
	if hdr["kid"] != kid {
		t.Errorf("token kid %q, JWKS kid %q", hdr["kid"], kid)
	}
}
