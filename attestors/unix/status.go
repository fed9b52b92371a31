package unix

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
)

// maxStatusBytes bounds the read of /proc/PID/status (about 1.5 KiB in
// practice; the Uid/Gid/Groups lines come early).
const maxStatusBytes = 64 << 10

// status is what the attestor takes from /proc/PID/status.
type status struct {
	UID    uint32 // effective
	GID    uint32 // effective
	Groups []uint32
}

// parseStatus parses the Uid:, Gid: and Groups: lines of /proc/PID/status.
// Uid/Gid lines hold real, effective, saved and filesystem ids; the
// effective ones (second field) are what the kernel checks permissions with
// and what SO_PEERCRED reports. Uid and Gid are required, once each; a
// missing Groups line means no supplementary groups.
func parseStatus(data []byte) (status, error) {
	var st status
	var haveUID, haveGID, haveGroups bool
	for len(data) > 0 {
		var line []byte
		line, data, _ = bytes.Cut(data, []byte{'\n'})
		name, rest, ok := bytes.Cut(line, []byte{':'})
		if !ok {
			continue
		}
		switch string(name) {
		case "Uid", "Gid":
			isUID := string(name) == "Uid"
			if isUID && haveUID || !isUID && haveGID {
				return status{}, fmt.Errorf("%w: %s line repeated", ErrMalformed, name)
			}
			f := bytes.Fields(rest)
			if len(f) < 2 {
				return status{}, fmt.Errorf("%w: %s line has %d fields, want 4", ErrMalformed, name, len(f))
			}
			v, err := parseID(f[1])
			if err != nil {
				return status{}, fmt.Errorf("%w: %s: %v", ErrMalformed, name, err)
			}
			if isUID {
				st.UID, haveUID = v, true
			} else {
				st.GID, haveGID = v, true
			}
		case "Groups":
			if haveGroups {
				return status{}, fmt.Errorf("%w: Groups line repeated", ErrMalformed)
			}
			haveGroups = true
			for _, g := range bytes.Fields(rest) {
				v, err := parseID(g)
				if err != nil {
					return status{}, fmt.Errorf("%w: Groups: %v", ErrMalformed, err)
				}
				st.Groups = append(st.Groups, v)
			}
		}
	}
	if !haveUID || !haveGID {
		return status{}, fmt.Errorf("%w: missing Uid or Gid line", ErrMalformed)
	}
	return st, nil
}

// parseID parses a decimal uid or gid. The kernel prints ids as unsigned
// decimals without sign or leading zeros.
func parseID(b []byte) (uint32, error) {
	if len(b) == 0 || len(b) > 1 && b[0] == '0' || b[0] == '+' {
		return 0, fmt.Errorf("invalid id %q", b)
	}
	v, err := strconv.ParseUint(string(b), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid id %q", b)
	}
	return uint32(v), nil
}

// statusBufs holds buffers for /proc/PID/status.
var statusBufs = sync.Pool{New: func() any { b := make([]byte, maxStatusBytes); return &b }}

// readStatus reads at most maxStatusBytes of /proc/PID/status and parses it.
// It uses raw system calls: an os.File costs a poller registration attempt
// and a finalizer, a fifth of a cached attestation.
func readStatus(path string) (status, error) {
	fd, err := openRetry(path)
	if err != nil {
		return status{}, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	bp := statusBufs.Get().(*[]byte)
	defer statusBufs.Put(bp)
	buf := *bp
	n := 0
	for n < len(buf) {
		m, err := syscall.Read(fd, buf[n:])
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return status{}, &os.PathError{Op: "read", Path: path, Err: err}
		}
		if m <= 0 {
			break
		}
		n += m
	}
	return parseStatus(buf[:n])
}

func openRetry(path string) (int, error) {
	for {
		fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if !errors.Is(err, syscall.EINTR) {
			return fd, err
		}
	}
}
