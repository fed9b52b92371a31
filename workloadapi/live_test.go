package workloadapi

import (
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The last check before a send: an X.509-SVID past its expiry by the wall
// clock is never sent, whatever the backend returned; the caller gets
// Unavailable (and retries).
func TestCheckLiveRefusesExpired(t *testing.T) {
	now := time.Now()
	if err := checkLive([]X509SVID{{SPIFFEID: "spiffe://x/a", ExpiresAt: now.Add(time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	err := checkLive([]X509SVID{{SPIFFEID: "spiffe://x/a", ExpiresAt: now.Add(time.Minute)}, {SPIFFEID: "spiffe://x/b", ExpiresAt: now.Add(-time.Second)}})
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("expired SVID: %v", err)
	}
	s := &Server{log: slog.New(slog.DiscardHandler), obs: nopObserver{}}
	if code := status.Code(s.toStatus("FetchX509SVID", nil, fmt.Errorf("x: %w", ErrUnavailable))); code != codes.Unavailable {
		t.Fatalf("ErrUnavailable maps to %v", code)
	}
}
