package ca

import (
	"testing"
	"time"
)

func BenchmarkMintX509SVID(b *testing.B) {
	c := newCA(b, dataDir(b), nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.MintX509SVID(webID, []string{"web.internal"}, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMintJWTSVID(b *testing.B) {
	c := newCA(b, dataDir(b), nil)
	aud := []string{"aud"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.MintJWTSVID(webID, aud, time.Minute); err != nil {
			b.Fatal(err)
		}
	}
}
