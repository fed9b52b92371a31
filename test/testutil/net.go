package testutil

import (
	"bytes"
	"net"
	"sync"
)

func netListen() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }

// LockedBuffer is a bytes.Buffer safe for concurrent writes and reads
// (a child process's output read while it runs).
type LockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
