package agent

import (
	"log/slog"
	"testing"

	"github.com/nodeward/nodeward/agent/config"
)

func TestFitFDs(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	def := config.DefaultLimits()
	for _, tc := range []struct {
		nofile        uint64
		conns, perUID int
	}{
		{0, 1024, 128},
		{1 << 20, 1024, 128},
		{1024, 480, 120}, // (1024-64)/2, a quarter per uid
		{64, 24, 6},      // (64-16)/2
		{8, 1, 1},
	} {
		got := fitFDs(def, tc.nofile, log)
		if got.MaxConns != tc.conns || got.MaxConnsPerUID != tc.perUID {
			t.Errorf("nofile %d: max_conns %d, per uid %d; want %d, %d", tc.nofile, got.MaxConns, got.MaxConnsPerUID, tc.conns, tc.perUID)
		}
		if tc.nofile > 0 && uint64(got.MaxConns*fdsPerConn) >= tc.nofile && tc.nofile > 16 {
			t.Errorf("nofile %d: %d connections could use every descriptor", tc.nofile, got.MaxConns)
		}
	}
}
