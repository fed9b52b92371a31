package tpm

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
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
	t    transport.TPMCloser
	sem  chan struct{} // held while a command sequence runs
	once sync.Once
}

// Open opens the TPM at addr: a device path (/dev/tpmrm0, /dev/tpm0),
// tcp://host:port (a TPM simulator such as swtpm; its control port is
// port+1 and is never used to power the TPM), or unix:///path (swtpm's
// unixio server). It checks the TPM answers.
func Open(ctx context.Context, addr string) (*TPM, error) {
	var (
		t   transport.TPMCloser
		err error
	)
	switch {
	case strings.HasPrefix(addr, "tcp://"):
		hostport := strings.TrimPrefix(addr, "tcp://")
		host, port, serr := net.SplitHostPort(hostport)
		p, perr := strconv.Atoi(port)
		if serr != nil || perr != nil {
			return nil, fmt.Errorf("%w %s: want tcp://host:port", ErrOpen, addr)
		}
		var tt *tcp.TPM
		tt, err = tcp.Open(tcp.Config{CommandAddress: hostport, PlatformAddress: net.JoinHostPort(host, strconv.Itoa(p+1))})
		if err == nil {
			t = tt
		}
	case strings.HasPrefix(addr, "unix://"):
		t, err = linuxudstpm.Open(strings.TrimPrefix(addr, "unix://"))
	case strings.HasPrefix(addr, "/"):
		t, err = linuxtpm.Open(addr)
	default:
		return nil, fmt.Errorf("%w %q: want a device path, tcp://host:port or unix:///path", ErrOpen, addr)
	}
	if err != nil {
		return nil, fmt.Errorf("%w %s: %v", ErrOpen, addr, err)
	}
	tp := New(t)
	if err := tp.Ping(ctx); err != nil {
		_ = tp.Close()
		return nil, fmt.Errorf("%w %s: %v", ErrOpen, addr, err)
	}
	return tp, nil
}

// New wraps an open transport (for example a socketpair to swtpm). The TPM
// takes ownership of t.
func New(t transport.TPMCloser) *TPM {
	tp := &TPM{t: &retrying{t}, sem: make(chan struct{}, 1)}
	return tp
}

// Close closes the transport.
func (tp *TPM) Close() error {
	var err error
	tp.once.Do(func() { err = tp.t.Close() })
	return err
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
		done <- f(tp.t)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("%w: %v", ErrTimeout, ctx.Err())
	}
}

// retrying resends a command the TPM answered with TPM_RC_RETRY, YIELDED
// or TESTING (all "try again" warnings), a bounded number of times.
type retrying struct{ transport.TPMCloser }

func (r *retrying) Send(cmd []byte) ([]byte, error) {
	delay := 5 * time.Millisecond
	for attempt := 0; ; attempt++ {
		rsp, err := r.TPMCloser.Send(cmd)
		if err != nil || len(rsp) < 10 || attempt == 8 {
			return rsp, err
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
