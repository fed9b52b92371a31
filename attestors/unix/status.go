package unix

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// status is what the attestor takes from /proc/PID/status.
type status struct {
	UID    uint32 // effective
	GID    uint32 // effective
	Groups []uint32
}

// parseStatus parses the Uid:, Gid: and Groups: lines of /proc/PID/status.
// Uid/Gid lines hold real, effective, saved and filesystem ids; the
// effective ones (second field) are what the kernel checks permissions with
// and what SO_PEERCRED reports.
func parseStatus(data []byte) (status, error) {
	var st status
	var haveUID, haveGID bool
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 64*1024)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch name {
		case "Uid", "Gid":
			f := strings.Fields(rest)
			if len(f) < 2 {
				return status{}, fmt.Errorf("%w: %s line has %d fields", ErrMalformed, name, len(f))
			}
			v, err := strconv.ParseUint(f[1], 10, 32)
			if err != nil {
				return status{}, fmt.Errorf("%w: %s: %v", ErrMalformed, name, err)
			}
			if name == "Uid" {
				st.UID, haveUID = uint32(v), true
			} else {
				st.GID, haveGID = uint32(v), true
			}
		case "Groups":
			for _, g := range strings.Fields(rest) {
				v, err := strconv.ParseUint(g, 10, 32)
				if err != nil {
					return status{}, fmt.Errorf("%w: Groups: %v", ErrMalformed, err)
				}
				st.Groups = append(st.Groups, uint32(v))
			}
		}
	}
	if err := sc.Err(); err != nil {
		return status{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if !haveUID || !haveGID {
		return status{}, fmt.Errorf("%w: missing Uid or Gid line", ErrMalformed)
	}
	return st, nil
}
