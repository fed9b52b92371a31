package config

import (
	"strings"
	"testing"
	"time"
)

// TestCALifetimes: ca.ttl and ca.jwt_key_ttl default to 7d, accept Nd, and
// an explicit value shorter than CALifeFactor x the longest SVID ttl is
// refused at its line; without one the default grows to fit the entries.
func TestCALifetimes(t *testing.T) {
	cfg, err := Parse("agent.yaml", []byte("trust_domain: example.org\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.CA.TTL != Duration(7*24*time.Hour) || cfg.CA.JWTKeyTTL != Duration(7*24*time.Hour) {
		t.Fatalf("defaults %v %v, want 7d", cfg.CA.TTL, cfg.CA.JWTKeyTTL)
	}
	cfg, err = Parse("agent.yaml", []byte("ca:\n  ttl: 2d\n  jwt_key_ttl: 36h\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.CA.TTL != Duration(48*time.Hour) || cfg.CA.JWTKeyTTL != Duration(36*time.Hour) {
		t.Fatalf("got %v %v", cfg.CA.TTL, cfg.CA.JWTKeyTTL)
	}
	_, err = Parse("agent.yaml", []byte(entry0+"    x509_ttl: 12h\nca:\n  ttl: 2d\n"))
	if err == nil || !strings.HasPrefix(err.Error(), "agent.yaml:6: ca.ttl: 48h0m0s is less than 6 x the longest X.509-SVID ttl (12h0m0s, entry at agent.yaml:2)") {
		t.Fatalf("short ca.ttl: %v", err)
	}
	_, err = Parse("agent.yaml", []byte(entry0+"    jwt_ttl: 1h\nca:\n  jwt_key_ttl: 5h\n"))
	if err == nil || !strings.HasPrefix(err.Error(), "agent.yaml:6: ca.jwt_key_ttl: 5h0m0s is less than 6 x the longest JWT-SVID ttl") {
		t.Fatalf("short ca.jwt_key_ttl: %v", err)
	}
	cfg, err = Parse("agent.yaml", []byte(entry0+"    x509_ttl: 48h\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.CA.TTL != Duration(12*24*time.Hour) {
		t.Fatalf("default ttl for a 48h SVID: %v, want 12d", cfg.CA.TTL)
	}
	cfg, err = Parse("agent.yaml", []byte(entry0+"    x509_ttl: 48h\nca:\n  rotate: false\n  ttl: 1d\n"))
	if err != nil || !cfg.CA.NoRotate {
		t.Fatalf("rotate: false: %v", err)
	}
	if _, err := Parse("agent.yaml", []byte("ca:\n  rotate: maybe\n")); err == nil {
		t.Fatal("ca.rotate: maybe accepted")
	}
	if _, err := Parse("agent.yaml", []byte("ca:\n  ttl: 0s\n")); err == nil {
		t.Fatal("ca.ttl 0s accepted")
	}
}
