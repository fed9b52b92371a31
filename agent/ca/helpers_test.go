package ca

import (
	"bytes"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var (
	td = spiffeid.RequireTrustDomainFromString("example.org")
	// t0 is a whole second: X.509 times have second precision.
	t0    = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	webID = spiffeid.RequireFromString("spiffe://example.org/web")
)

// fakeClock is a settable clock, safe for concurrent use.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// syncBuffer collects log output from concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newLogger() (*slog.Logger, *syncBuffer) {
	var buf syncBuffer
	return slog.New(slog.NewTextHandler(&buf, nil)), &buf
}

// newCA loads or creates a CA in dir with the given clock (nil: real time).
func newCA(tb testing.TB, dir string, clock func() time.Time) *CA {
	tb.Helper()
	c, err := LoadOrCreate(Config{TrustDomain: td, Dir: dir, Clock: clock})
	if err != nil {
		tb.Fatalf("LoadOrCreate(%s): %v", dir, err)
	}
	return c
}

func dataDir(tb testing.TB) string {
	tb.Helper()
	return filepath.Join(tb.TempDir(), "data")
}
