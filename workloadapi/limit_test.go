package workloadapi

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/nodeward/nodeward/internal/peercred"
)

func uidCtx(uid uint32) context.Context {
	return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: peercred.AuthInfo{Info: &peercred.Info{UID: uid}}})
}

type reasons struct {
	mu sync.Mutex
	m  map[string]int
}

func (r *reasons) add(s string) { r.mu.Lock(); r.m[s]++; r.mu.Unlock() }

func wantExhausted(t *testing.T, err error) {
	t.Helper()
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("err = %v, want ResourceExhausted", err)
	}
}

func TestRateLimitPerUID(t *testing.T) {
	r := &reasons{m: map[string]int{}}
	l := newLimiter(Limits{Rate: 0.001, Burst: 3}, r.add)
	for range 3 {
		if err := l.allowCall(uidCtx(1000)); err != nil {
			t.Fatal(err)
		}
	}
	wantExhausted(t, l.allowCall(uidCtx(1000)))
	if err := l.allowCall(uidCtx(2000)); err != nil {
		t.Fatalf("another uid throttled: %v", err)
	}
	if r.m[LimitedRate] != 1 {
		t.Fatalf("reasons = %v", r.m)
	}
	if err := newLimiter(Limits{}, nil).allowCall(uidCtx(1)); err != nil {
		t.Fatalf("rate 0 must be unlimited: %v", err)
	}
}

func TestStreamCaps(t *testing.T) {
	r := &reasons{m: map[string]int{}}
	l := newLimiter(Limits{MaxStreams: 3, MaxStreamsPerUID: 2}, r.add)
	rel1, err := l.openStream(uidCtx(1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.openStream(uidCtx(1)); err != nil {
		t.Fatal(err)
	}
	_, err = l.openStream(uidCtx(1))
	wantExhausted(t, err)
	if _, err := l.openStream(uidCtx(2)); err != nil {
		t.Fatalf("another uid refused: %v", err)
	}
	_, err = l.openStream(uidCtx(3))
	wantExhausted(t, err)
	if r.m[LimitedMaxStreamsPerUID] != 1 || r.m[LimitedMaxStreams] != 1 {
		t.Fatalf("reasons = %v", r.m)
	}
	rel1()
	rel1() // idempotent
	if _, err := l.openStream(uidCtx(1)); err != nil {
		t.Fatalf("slot not released: %v", err)
	}
	if l.streams != 3 || l.perUID[1] != 2 {
		t.Fatalf("streams %d, uid 1: %d", l.streams, l.perUID[1])
	}
}

func TestLimiterConcurrentAndPruned(t *testing.T) {
	l := newLimiter(Limits{Rate: 1e6, Burst: 10, MaxStreams: 1 << 20, MaxStreamsPerUID: 1 << 20}, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range maxRateUIDs {
				ctx := uidCtx(uint32(g*maxRateUIDs + i))
				_ = l.allowCall(ctx)
				rel, err := l.openStream(ctx)
				if err == nil {
					rel()
				}
			}
		})
	}
	wg.Wait()
	if len(l.rates) > maxRateUIDs || l.streams != 0 || len(l.perUID) != 0 {
		t.Fatalf("rates %d, streams %d, perUID %d", len(l.rates), l.streams, len(l.perUID))
	}
}

func TestCallCost(t *testing.T) {
	aud := make([]string, 32)
	for i := range aud {
		aud[i] = strings.Repeat("a", 1024)
	}
	if c := callCost(&workload.JWTSVIDRequest{Audience: []string{"svc"}}); c != 1 {
		t.Errorf("small request costs %d, want 1", c)
	}
	if c := callCost(&workload.JWTSVIDRequest{Audience: aud}); c < 120 || c > 122 {
		t.Errorf("32 KiB of audiences cost %d, want 121", c)
	}
	token := strings.Repeat("t", 1800) // a JWT-SVID of ordinary size
	if c := callCost(&workload.ValidateJWTSVIDRequest{Audience: "svc", Svid: token}); c != 1 {
		t.Errorf("validating an ordinary JWT-SVID costs %d, want 1", c)
	}
	l := newLimiter(Limits{Rate: 0.001, Burst: 10}, nil)
	if err := l.allowCost(uidCtx(1), 100); err != nil {
		t.Fatalf("a cost over the burst must be capped at the burst: %v", err)
	}
	wantExhausted(t, l.allowCost(uidCtx(1), 1))
}

func TestTapRefusesEmptyBudget(t *testing.T) {
	r := &reasons{m: map[string]int{}}
	l := newLimiter(Limits{Rate: 0.001, Burst: 2}, r.add)
	if _, err := l.tap(uidCtx(1), nil); err != nil {
		t.Fatalf("first call of a uid refused: %v", err)
	}
	_ = l.allowCost(uidCtx(1), 2)
	_, err := l.tap(uidCtx(1), nil)
	wantExhausted(t, err)
	if _, err := l.tap(uidCtx(2), nil); err != nil {
		t.Fatalf("another uid refused: %v", err)
	}
	if r.m[LimitedRate] != 1 {
		t.Fatalf("reasons = %v", r.m)
	}
}

func TestReadDelay(t *testing.T) {
	l := newLimiter(Limits{Rate: 10, Burst: 2}, nil)
	if d := l.readDelay(1); d != 0 {
		t.Fatalf("unknown uid delayed %v", d)
	}
	_ = l.allowCost(uidCtx(1), 2)
	if d := l.readDelay(1); d <= 0 || d > 100*time.Millisecond {
		t.Fatalf("empty budget at 10/s: delay %v, want (0, 100ms]", d)
	}
	if d := l.readDelay(2); d != 0 {
		t.Fatalf("another uid delayed %v", d)
	}
	slow := newLimiter(Limits{Rate: 0.001, Burst: 1}, nil)
	_ = slow.allowCall(uidCtx(1))
	if d := slow.readDelay(1); d != maxReadDelay {
		t.Fatalf("delay %v, want the cap %v", d, maxReadDelay)
	}
}

// After a costly call was refused, the tap and the read delay wait until
// the budget can pay for it, not just for one call.
func TestNeedOfRefusedCall(t *testing.T) {
	l := newLimiter(Limits{Rate: 100, Burst: 50}, nil)
	ctx := uidCtx(1)
	if err := l.allowCost(ctx, 40); err != nil {
		t.Fatal(err)
	}
	wantExhausted(t, l.allowCost(ctx, 40)) // ~10 tokens left
	_, err := l.tap(ctx, nil)
	wantExhausted(t, err)
	if d := l.readDelay(1); d < 200*time.Millisecond || d > 310*time.Millisecond {
		t.Fatalf("read delay %v, want ~300ms (30 tokens at 100/s)", d)
	}
}
