package tpm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"
	"github.com/google/go-tpm/tpm2/transport/tcp"
)

// DefaultTimeout bounds a TPM operation whose context has no deadline.
const DefaultTimeout = 10 * time.Second

// TPM is the single owner of one TPM: its methods are safe for concurrent
// use and run one at a time.
type TPM struct {
	sem    chan struct{} // held while a command sequence runs
	t      atomic.Pointer[retrying]
	reopen func() (transport.TPMCloser, error)
	closed atomic.Bool
}

// Open opens the TPM at addr: a device path (/dev/tpmrm0, /dev/tpm0),
// tcp://host:port (a TPM simulator such as swtpm; its control port is
// port+1 and is never used to power the TPM), or unix:///path (swtpm's
// unixio server). It checks the TPM answers. A connection that breaks
// later (a simulator restarted) is reopened by the next operation.
func Open(ctx context.Context, addr string) (*TPM, error) {
	open, err := opener(addr)
	if err != nil {
		return nil, err
	}
	t, err := open()
	if err != nil {
		return nil, fmt.Errorf("%w %s: %v", ErrOpen, addr, err)
	}
	tp := New(t)
	tp.reopen = open
	if err := tp.Ping(ctx); err != nil {
		// Close the transport at once: Close would wait DefaultTimeout
		// for the ping that hangs, and the caller's deadline (or signal)
		// has passed. Closing it unblocks that ping.
		tp.closed.Store(true)
		_ = t.Close()
		return nil, fmt.Errorf("%w %s: %v", ErrOpen, addr, err)
	}
	return tp, nil
}

// opener returns how to open the transport for addr.
func opener(addr string) (func() (transport.TPMCloser, error), error) {
	switch {
	case strings.HasPrefix(addr, "tcp://"):
		hostport := strings.TrimPrefix(addr, "tcp://")
		host, port, serr := net.SplitHostPort(hostport)
		p, perr := strconv.Atoi(port)
		if serr != nil || perr != nil {
			return nil, fmt.Errorf("%w %s: want tcp://host:port", ErrOpen, addr)
		}
		return func() (transport.TPMCloser, error) {
			return tcp.Open(tcp.Config{CommandAddress: hostport, PlatformAddress: net.JoinHostPort(host, strconv.Itoa(p+1))})
		}, nil
	case strings.HasPrefix(addr, "unix://"):
		return func() (transport.TPMCloser, error) { return linuxudstpm.Open(strings.TrimPrefix(addr, "unix://")) }, nil
	case strings.HasPrefix(addr, "/"):
		return func() (transport.TPMCloser, error) { return linuxtpm.Open(addr) }, nil
	}
	return nil, fmt.Errorf("%w %q: want a device path, tcp://host:port or unix:///path", ErrOpen, addr)
}

// New wraps an open transport (for example a socketpair to swtpm). The TPM
// takes ownership of t; a broken t is not reopened.
func New(t transport.TPMCloser) *TPM {
	tp := &TPM{sem: make(chan struct{}, 1)}
	tp.t.Store(&retrying{TPMCloser: t})
	return tp
}

// Close closes the transport; later operations fail with ErrOpen. It waits
// for a running operation up to DefaultTimeout.
func (tp *TPM) Close() error {
	select {
	case tp.sem <- struct{}{}:
		defer func() { <-tp.sem }()
	case <-time.After(DefaultTimeout):
		// An operation hangs in the transport: closing it unblocks it.
	}
	if tp.closed.Swap(true) {
		return nil
	}
	return tp.t.Load().Close()
}

// Ping asks the TPM for random bytes: it answers or it does not.
func (tp *TPM) Ping(ctx context.Context) error {
	return tp.do(ctx, func(t transport.TPM) error {
		_, err := tpm2.GetRandom{BytesRequested: 8}.Execute(t)
		return err
	})
}

// do runs f with exclusive use of the TPM, waiting at most until ctx's
// deadline (DefaultTimeout without one). If the deadline passes while f
// runs, do returns ErrTimeout and f keeps the TPM until it finishes.
func (tp *TPM) do(ctx context.Context, f func(t transport.TPM) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
	}
	select {
	case tp.sem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("%w: waiting for the TPM: %v", ErrTimeout, ctx.Err())
	}
	done := make(chan error, 1)
	go func() {
		defer func() { <-tp.sem }()
		done <- tp.run(f)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("%w: %v", ErrTimeout, ctx.Err())
	}
}

// run runs f (holding sem). A transport that failed is reopened first,
// and once more if it fails during f (then f runs again: a restarted TPM
// has lost the transient objects f made, so nothing is left behind).
func (tp *TPM) run(f func(t transport.TPM) error) error {
	if tp.closed.Load() {
		return fmt.Errorf("%w: closed", ErrOpen)
	}
	if tp.t.Load().failed.Load() && tp.reopen != nil {
		if err := tp.reconnect(); err != nil {
			return err
		}
	}
	err := f(tp.t.Load())
	if err != nil && tp.t.Load().failed.Load() && tp.reopen != nil && !tp.closed.Load() {
		if rerr := tp.reconnect(); rerr != nil {
			return errors.Join(err, rerr)
		}
		err = f(tp.t.Load())
	}
	return err
}

func (tp *TPM) reconnect() error {
	_ = tp.t.Load().Close()
	t, err := tp.reopen()
	if err != nil {
		return fmt.Errorf("%w: reopening after a broken connection: %v", ErrOpen, err)
	}
	tp.t.Store(&retrying{TPMCloser: t})
	return nil
}

// retrying resends a command the TPM answered with TPM_RC_RETRY, YIELDED
// or TESTING (all "try again" warnings), a bounded number of times.
// It also remembers a transport failure (as opposed to a TPM error code),
// so the owner can reopen the connection.
type retrying struct {
	transport.TPMCloser
	failed atomic.Bool
}

func (r *retrying) Send(cmd []byte) ([]byte, error) {
	delay := 5 * time.Millisecond
	for attempt := 0; ; attempt++ {
		rsp, err := r.TPMCloser.Send(cmd)
		if err != nil {
			r.failed.Store(true)
			return rsp, err
		}
		if len(rsp) < 10 || attempt == 8 {
			return rsp, nil
		}
		switch tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10])) {
		case tpm2.TPMRCRetry, tpm2.TPMRCYielded, tpm2.TPMRCTesting:
			time.Sleep(delay)
			delay = min(2*delay, 200*time.Millisecond)
		default:
			return rsp, nil
		}
	}
}

// flush flushes a transient handle; errors are ignored since nothing more
// can be done about them (the handle is then reclaimed at TPM restart).
func flush(t transport.TPM, h tpm2.TPMHandle) {
	_, _ = tpm2.FlushContext{FlushHandle: h}.Execute(t)
}
