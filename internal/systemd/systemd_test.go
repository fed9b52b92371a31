package systemd

import (
	"errors"
	"net"
	"path/filepath"
	"testing"
)

func unixListener(t *testing.T) *net.UnixListener {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "s.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func TestTake(t *testing.T) {
	w, b := unixListener(t), unixListener(t)
	s := Sockets{WorkloadSocket: {w}, BrokerSocket: {b}}
	if got, err := s.Take(WorkloadSocket); err != nil || got != w {
		t.Fatalf("Take(workload) = %v, %v", got, err)
	}
	if got, err := s.Take(WorkloadSocket); err != nil || got != nil {
		t.Fatalf("second Take(workload) = %v, %v; want nil, nil", got, err)
	}
	if left := s.Leftover(); len(left) != 1 || left[0] != BrokerSocket {
		t.Fatalf("Leftover = %v", left)
	}
}

func TestTakeUnnamedSingleSocket(t *testing.T) {
	u := unixListener(t)
	s := Sockets{"LISTEN_FD_3": {u}}
	if got, err := s.Take(WorkloadSocket); err != nil || got != u {
		t.Fatalf("Take of the only, unnamed socket = %v, %v", got, err)
	}
	// A socket named for the broker is never handed to the agent.
	s = Sockets{BrokerSocket: {unixListener(t)}}
	if got, err := s.Take(WorkloadSocket); err != nil || got != nil {
		t.Fatalf("Take(workload) with only a broker socket = %v, %v", got, err)
	}
}

func TestTakeRefusesTCPAndDuplicates(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	if _, err := (Sockets{WorkloadSocket: {tcp}}).Take(WorkloadSocket); !errors.Is(err, ErrUnexpectedSocket) {
		t.Fatalf("TCP socket: %v, want ErrUnexpectedSocket", err)
	}
	if _, err := (Sockets{WorkloadSocket: {unixListener(t), unixListener(t)}}).Take(WorkloadSocket); !errors.Is(err, ErrUnexpectedSocket) {
		t.Fatalf("two sockets of one name: %v, want ErrUnexpectedSocket", err)
	}
}

func TestNotifierDisabledWithoutNotifySocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if NewNotifier(nil).Enabled() {
		t.Fatal("notifier enabled without NOTIFY_SOCKET")
	}
}
