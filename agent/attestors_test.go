package agent

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nodeward/nodeward/attestors/selector"
)

// stubAttestor is a test double for the combinator only: it returns fixed
// selectors, an error, or blocks until its context ends.
type stubAttestor struct {
	name  string
	sels  []selector.Selector
	err   error
	block bool
}

func (s stubAttestor) Name() string { return s.name }

// MayBlock puts blocking stubs on the concurrent path.
func (s stubAttestor) MayBlock() bool { return s.block }

func (s stubAttestor) Attest(ctx context.Context, _ int32) ([]selector.Selector, error) {
	if s.block {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return s.sels, s.err
}

func TestAttestPIDCombines(t *testing.T) {
	a := stubAttestor{name: "a", sels: []selector.Selector{selector.MustParse("unix:uid:1")}}
	b := stubAttestor{name: "b", sels: []selector.Selector{selector.MustParse("cgroup:path:/x")}}
	sels, err := AttestPID(context.Background(), []WorkloadAttestor{a, b}, 1, time.Second)
	if err != nil || strings.Join(selector.Strings(sels), ",") != "unix:uid:1,cgroup:path:/x" {
		t.Fatalf("got %v %v", sels, err)
	}
}

func TestAttestPIDFailsClosed(t *testing.T) {
	ok := stubAttestor{name: "unix", sels: []selector.Selector{selector.MustParse("unix:uid:1")}}
	bad := stubAttestor{name: "cgroup", err: errors.New("boom")}
	sels, err := AttestPID(context.Background(), []WorkloadAttestor{ok, bad}, 1, time.Second)
	if err == nil || sels != nil || !strings.Contains(err.Error(), "attestor cgroup") {
		t.Fatalf("one failing attestor: sels=%v err=%v; want no selectors and an error naming it", sels, err)
	}
	slow := stubAttestor{name: "slow", block: true}
	start := time.Now()
	sels, err = AttestPID(context.Background(), []WorkloadAttestor{ok, slow}, 1, 50*time.Millisecond)
	if !errors.Is(err, ErrAttestTimeout) && !strings.Contains(err.Error(), "attestor slow") {
		t.Fatalf("slow attestor: %v", err)
	}
	if sels != nil || time.Since(start) > 5*time.Second {
		t.Fatalf("slow attestor: sels=%v after %v", sels, time.Since(start))
	}
}

// Blocking attestors run concurrently: two that each wait for the other's
// start can only finish if they overlap.
func TestAttestPIDRunsBlockingAttestorsConcurrently(t *testing.T) {
	a, b := make(chan struct{}), make(chan struct{})
	x := rendezvous{name: "x", mine: a, theirs: b}
	y := rendezvous{name: "y", mine: b, theirs: a}
	w := newWorkers(2)
	defer w.stop()
	sels, err := attestPID(context.Background(), []WorkloadAttestor{x, y}, 1, 5*time.Second, w)
	if err != nil || len(sels) != 2 {
		t.Fatalf("got %v %v", sels, err)
	}
}

type rendezvous struct {
	name         string
	mine, theirs chan struct{}
}

func (r rendezvous) Name() string   { return r.name }
func (r rendezvous) MayBlock() bool { return true }
func (r rendezvous) Attest(ctx context.Context, _ int32) ([]selector.Selector, error) {
	close(r.mine)
	select {
	case <-r.theirs:
		return []selector.Selector{selector.New("test", "name", r.name)}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
