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
