package sinks

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nodeward/nodeward/internal/safefs"
)

// errNotRunning: the PID file is missing or names no live process.
var errNotRunning = errors.New("not running")

// errWrongProcess: the PID file names a process that is not the configured
// binary.
var errWrongProcess = errors.New("process is not the configured binary")

// signalPIDFile sends sig to the process whose pid path holds, if it is
// safe to: the PID file must be a regular file (not a symlink) owned by
// root or our euid, not writable by group or others, in a directory only
// root or we can change (safefs); and the process must be running binary
// (its /proc/PID/exe the same file). The process is pinned with a pidfd
// before the check, so a PID reused in between is not signalled.
func signalPIDFile(path, binary string, sig syscall.Signal) error {
	pid, err := readPIDFile(path)
	if err != nil {
		return err
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return errNotRunning
	}
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer func() { _ = unix.Close(pidfd) }()
	if err := sameBinary(pid, binary); err != nil {
		return fmt.Errorf("pid file %s names pid %d: %w", path, pid, err)
	}
	if err := unix.PidfdSendSignal(pidfd, sig, nil, 0); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return errNotRunning
		}
		return fmt.Errorf("signal pid %d: %w", pid, err)
	}
	return nil
}

// readPIDFile reads a trusted PID file (see signalPIDFile).
func readPIDFile(path string) (int, error) {
	d, err := safefs.OpenDir(filepath.Dir(path), false)
	if errors.Is(err, os.ErrNotExist) {
		return 0, errNotRunning
	}
	if err != nil {
		return 0, fmt.Errorf("pid file %s: %w", path, err)
	}
	defer func() { _ = d.Close() }()
	f, err := safefs.OpenFileAt(d, filepath.Base(path), false)
	if errors.Is(err, os.ErrNotExist) {
		return 0, errNotRunning
	}
	if err != nil {
		return 0, fmt.Errorf("pid file: %w", err)
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, 64))
	if err != nil {
		return 0, fmt.Errorf("pid file %s: %w", path, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("pid file %s: no valid pid", path)
	}
	return pid, nil
}

// sameBinary checks that pid runs binary: /proc/PID/exe and binary are the
// same file (device and inode).
func sameBinary(pid int, binary string) error {
	want, err := os.Stat(binary)
	if err != nil {
		return fmt.Errorf("binary: %w", err)
	}
	got, err := os.Stat("/proc/" + strconv.Itoa(pid) + "/exe")
	if errors.Is(err, os.ErrNotExist) {
		return errNotRunning
	}
	if err != nil {
		return fmt.Errorf("cannot read its executable: %w", err)
	}
	if !os.SameFile(want, got) {
		exe, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
		return fmt.Errorf("it runs %q, want %s: %w", exe, binary, errWrongProcess)
	}
	return nil
}
