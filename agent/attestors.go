package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nodeward/nodeward/attestors/cgroup"
	"github.com/nodeward/nodeward/attestors/selector"
	"github.com/nodeward/nodeward/attestors/unix"
)

// WorkloadAttestor is one workload attestor as the agent consumes it.
type WorkloadAttestor interface {
	Name() string
	Attest(ctx context.Context, pid int32) ([]selector.Selector, error)
}

// DefaultAttestTimeout bounds one caller's attestation (all attestors).
const DefaultAttestTimeout = 2 * time.Second

// BuiltIns returns the compiled-in workload attestors, in order.
func BuiltIns(log *slog.Logger) (*unix.Attestor, []WorkloadAttestor) {
	// A slow hash must give up (and omit the sha256 selector) well before
	// the whole attestation's deadline fails the caller.
	u := unix.New(unix.Config{Logger: log, HashTimeout: DefaultAttestTimeout / 2})
	return u, []WorkloadAttestor{u, cgroup.New(cgroup.Config{})}
}

var (
	_ WorkloadAttestor = (*unix.Attestor)(nil)
	_ WorkloadAttestor = (*cgroup.Attestor)(nil)
)

// ErrAttestTimeout: the attestors did not finish within the deadline.
var ErrAttestTimeout = errors.New("attestation timed out")

// mayBlock is implemented by attestors that can block (hashing a binary,
// asking D-Bus or a TPM). Attestors without it are taken to read only /proc
// and finish in microseconds.
type mayBlock interface{ MayBlock() bool }

// AttestPID runs every attestor on pid within timeout. Attestors that may
// block run concurrently on other goroutines; /proc-only attestors run on
// the calling goroutine meanwhile, since handing them to another goroutine
// costs more than they do (measured: 25 µs of agent CPU per call, for two
// attestors of 7 and 13 µs). Any attestor's error fails the whole
// attestation (fail closed: no partial identity), and the error names it.
func AttestPID(ctx context.Context, attestors []WorkloadAttestor, pid int32, timeout time.Duration) ([]selector.Selector, error) {
	return attestPID(ctx, attestors, pid, timeout, nil)
}

// workers runs attestors on long-lived goroutines: a goroutine started per
// call grows its stack on every attestation, which measurably costs CPU.
type workers struct {
	jobs chan func()
	done chan struct{}
	wg   sync.WaitGroup
}

func newWorkers(n int) *workers {
	w := &workers{jobs: make(chan func()), done: make(chan struct{})}
	w.wg.Add(n)
	for range n {
		go func() {
			defer w.wg.Done()
			for {
				select {
				case job := <-w.jobs:
					job()
				case <-w.done:
					return
				}
			}
		}()
	}
	return w
}

// run hands f to an idle worker, or starts a goroutine when none is idle
// (or the workers have stopped).
func (w *workers) run(f func()) {
	if w != nil {
		select {
		case w.jobs <- f:
			return
		default:
		}
	}
	go f()
}

// stop ends the workers; later jobs run on goroutines of their own.
func (w *workers) stop() {
	close(w.done)
	w.wg.Wait()
}

func attestPID(ctx context.Context, attestors []WorkloadAttestor, pid int32, timeout time.Duration, w *workers) ([]selector.Selector, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	type result struct {
		i    int
		sels []selector.Selector
		err  error
	}
	per := make([][]selector.Selector, len(attestors))
	var results chan result
	pending := 0
	for i, at := range attestors {
		if mb, ok := at.(mayBlock); ok && mb.MayBlock() {
			if results == nil {
				results = make(chan result, len(attestors))
			}
			pending++
			w.run(func() {
				s, err := at.Attest(ctx, pid)
				results <- result{i, s, err}
			})
		}
	}
	for i, at := range attestors {
		if mb, ok := at.(mayBlock); ok && mb.MayBlock() {
			continue
		}
		s, err := at.Attest(ctx, pid)
		if err != nil {
			return nil, fmt.Errorf("attestor %s: %w", at.Name(), err)
		}
		per[i] = s
	}
	for range pending {
		select {
		case r := <-results:
			if r.err != nil {
				return nil, fmt.Errorf("attestor %s: %w", attestors[r.i].Name(), r.err)
			}
			per[r.i] = r.sels
		case <-ctx.Done():
			return nil, fmt.Errorf("pid %d: %w after %s", pid, ErrAttestTimeout, timeout)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("pid %d: %w after %s", pid, ErrAttestTimeout, timeout)
	}
	var out []selector.Selector
	for _, s := range per {
		out = append(out, s...)
	}
	return out, nil
}
