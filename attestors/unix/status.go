package unix

import (
	"bytes"
	"fmt"
	"strconv"
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
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		name, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		switch string(name) {
		case "Uid", "Gid":
			f := bytes.Fields(rest)
			if len(f) < 2 {
				return status{}, fmt.Errorf("%w: %s line has %d fields", ErrMalformed, name, len(f))
			}
			v, err := strconv.ParseUint(string(f[1]), 10, 32)
			if err != nil {
				return status{}, fmt.Errorf("%w: %s: %v", ErrMalformed, name, err)
			}
			if string(name) == "Uid" {
				st.UID, haveUID = uint32(v), true
			} else {
				st.GID, haveGID = uint32(v), true
			}
		case "Groups":
			for _, g := range bytes.Fields(rest) {
				v, err := strconv.ParseUint(string(g), 10, 32)
				if err != nil {
					return status{}, fmt.Errorf("%w: Groups: %v", ErrMalformed, err)
				}
				st.Groups = append(st.Groups, uint32(v))
			}
		}
	}
	if !haveUID || !haveGID {
		return status{}, fmt.Errorf("%w: missing Uid or Gid line", ErrMalformed)
	}
	return st, nil
}
