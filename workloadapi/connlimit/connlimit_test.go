package connlimit

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// fakeListener hands out queued conns and errors.
type fakeListener struct {
	ch     chan any // net.Conn or error
	closed chan struct{}
	once   sync.Once
}

func newFake() *fakeListener {
	return &fakeListener{ch: make(chan any, 64), closed: make(chan struct{})}
}

func (f *fakeListener) Accept() (net.Conn, error) {
	select {
	case v := <-f.ch:
		if err, ok := v.(error); ok {
			return nil, err
		}
		return v.(net.Conn), nil
	case <-f.closed:
		return nil, net.ErrClosed
	}
}
func (f *fakeListener) Close() error   { f.once.Do(func() { close(f.closed) }); return nil }
func (f *fakeListener) Addr() net.Addr { return &net.UnixAddr{Name: "fake", Net: "unix"} }

// uidConn is a pipe end that claims a uid.
type uidConn struct {
	net.Conn
	uid    uint32
	closed chan struct{}
}

func (c *uidConn) Close() error {
	select {
	case <-c.closed:
	default:
		close(c.closed)
	}
	return c.Conn.Close()
}

func newConn(t *testing.T, uid uint32) *uidConn {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	return &uidConn{Conn: a, uid: uid, closed: make(chan struct{})}
}

type counts struct {
	mu sync.Mutex
	m  map[string]int
}

func (c *counts) add(k string) { c.mu.Lock(); c.m[k]++; c.mu.Unlock() }
func (c *counts) get(k string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[k]
}

func testListener(f *fakeListener, maxConns, perUID int) (*Listener, *counts, *counts) {
	refused, accErr := &counts{m: map[string]int{}}, &counts{m: map[string]int{}}
	l := New(f, Config{MaxConns: maxConns, MaxConnsPerUID: perUID, Refused: refused.add, AcceptError: accErr.add,
		PeerUID: func(c net.Conn) (uint32, error) {
			if u, ok := c.(*uidConn); ok {
				return u.uid, nil
			}
			return 0, errors.New("no uid")
		}})
	return l, refused, accErr
}

// waitClosed polls until c is closed or the deadline passes.
func waitClosed(t *testing.T, c *uidConn) {
	t.Helper()
	select {
	case <-c.closed:
	case <-time.After(10 * time.Second):
		t.Fatal("connection over the cap was not closed")
	}
}

func TestPerUIDCapKeepsOtherUIDsServed(t *testing.T) {
	f := newFake()
	l, refused, _ := testListener(f, 10, 3)
	defer l.Close()
	var kept []net.Conn
	for range 3 {
		f.ch <- newConn(t, 1000)
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		kept = append(kept, c)
	}
	over := newConn(t, 1000)
	f.ch <- over
	other := newConn(t, 2000)
	f.ch <- other
	c, err := l.Accept() // skips the refused one
	if err != nil {
		t.Fatal(err)
	}
	if c.(*conn).uid != 2000 {
		t.Fatalf("accepted uid %d, want 2000", c.(*conn).uid)
	}
	waitClosed(t, over)
	if n := refused.get(ReasonMaxConnsPerUID); n != 1 {
		t.Fatalf("refused per uid = %d, want 1", n)
	}
	if all, of := l.Open(1000); all != 4 || of != 3 {
		t.Fatalf("open = %d, of uid = %d; want 4, 3", all, of)
	}
	// Closing one (twice) frees exactly one slot of its uid.
	_ = kept[0].Close()
	_ = kept[0].Close()
	if all, of := l.Open(1000); all != 3 || of != 2 {
		t.Fatalf("after close: open = %d, of uid = %d; want 3, 2", all, of)
	}
	f.ch <- newConn(t, 1000)
	if _, err := l.Accept(); err != nil {
		t.Fatal(err)
	}
}

func TestTotalCapAndNoPeerCred(t *testing.T) {
	f := newFake()
	l, refused, _ := testListener(f, 2, 0)
	defer l.Close()
	for uid := range uint32(2) {
		f.ch <- newConn(t, uid)
		if _, err := l.Accept(); err != nil {
			t.Fatal(err)
		}
	}
	over := newConn(t, 7)
	f.ch <- over
	a, b := net.Pipe() // no uid
	defer b.Close()
	f.ch <- a
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = l.Accept()
	}()
	waitClosed(t, over)
	deadline := time.Now().Add(10 * time.Second)
	for refused.get(ReasonNoPeerCred) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("connection without peer credentials not refused")
		}
		time.Sleep(time.Millisecond)
	}
	if refused.get(ReasonMaxConns) != 1 {
		t.Fatalf("refused = %v", refused.m)
	}
	_ = l.Close()
	<-done
}

// EMFILE from accept is counted and retried; the listener keeps serving.
func TestAcceptErrorsRetried(t *testing.T) {
	f := newFake()
	l, _, accErr := testListener(f, 0, 0)
	defer l.Close()
	for range 3 {
		f.ch <- &net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	f.ch <- &net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.ENFILE)}
	f.ch <- newConn(t, 5)
	c, err := l.Accept()
	if err != nil {
		t.Fatalf("accept after EMFILE: %v", err)
	}
	_ = c.Close()
	if accErr.get("emfile") != 3 || accErr.get("enfile") != 1 {
		t.Fatalf("accept errors = %v", accErr.m)
	}
}

func TestCloseEndsBackoff(t *testing.T) {
	f := newFake()
	l, _, _ := testListener(f, 0, 0)
	for range 64 {
		f.ch <- errors.New("boom")
	}
	errc := make(chan error, 1)
	go func() { _, err := l.Accept(); errc <- err }()
	_ = l.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("err = %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Accept kept retrying after Close")
	}
}

// The real SO_PEERCRED path: our own uid, counted, refused over the cap
// (the client reads EOF), released on close.
func TestRealUnixSocket(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s.sock")
	ul, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	refused := &counts{m: map[string]int{}}
	l := New(ul, Config{MaxConnsPerUID: 1, Refused: refused.add})
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	defer func() {
		_ = l.Close()
		for c := range accepted {
			_ = c.Close()
		}
	}()
	c1, err := net.Dial("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	s1 := <-accepted
	if _, ok := s1.(interface{ UnixConn() *net.UnixConn }); !ok {
		t.Fatal("accepted conn does not expose its UnixConn")
	}
	if _, of := l.Open(uint32(os.Getuid())); of != 1 {
		t.Fatalf("open of our uid = %d, want 1", of)
	}
	c2, err := net.Dial("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_ = c2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c2.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("refused connection: read %v, want EOF", err)
	}
	if refused.get(ReasonMaxConnsPerUID) != 1 {
		t.Fatalf("refused = %v", refused.m)
	}
	_ = s1.Close()
	c3, err := net.Dial("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	select {
	case s3 := <-accepted:
		_ = s3.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("slot not released on close")
	}
}

// A read delay holds a read back, and Close ends the wait.
func TestReadDelay(t *testing.T) {
	f := newFake()
	var delayed atomic.Int32
	l := New(f, Config{
		PeerUID:   func(net.Conn) (uint32, error) { return 7, nil },
		ReadDelay: func(uid uint32) time.Duration { delayed.Add(1); return time.Hour },
	})
	defer l.Close()
	a, b := net.Pipe()
	defer b.Close()
	f.ch <- a
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { _, err := c.Read(make([]byte, 1)); errc <- err }()
	deadline := time.Now().Add(10 * time.Second)
	for delayed.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("read did not ask for a delay")
		}
		time.Sleep(time.Millisecond)
	}
	_ = c.Close()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("read of a closed conn succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end the read delay")
	}
}
