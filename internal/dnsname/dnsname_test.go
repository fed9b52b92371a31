package dnsname

import (
	"strings"
	"testing"
)

func TestValid(t *testing.T) {
	tests := []struct {
		name string
		want bool
	}{
		{"web", true},
		{"web.internal", true},
		{"*.example.com", true},
		{"a-b.c9.example", true},
		{"WEB.Example.COM", true},
		{strings.Repeat("a", 63) + ".x", true},
		{strings.Repeat("a.", 126) + "a", true}, // 253 bytes
		{strings.Repeat("a.", 127) + "a", false},
		{strings.Repeat("a", 64) + ".x", false},
		{"", false},
		{"*.", false},
		{"*", false},
		{"a..b", false},
		{".a", false},
		{"a.", false},
		{"a-.b", false},
		{"a_b.example", false},
		{"1.2.3.4", false},
		{"xn--bcher-kva.example", true},
		{"bücher.example", false},
	}
	for _, tt := range tests {
		if got := Valid(tt.name); got != tt.want {
			t.Errorf("Valid(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
}
