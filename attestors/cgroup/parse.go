package cgroup

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// Line is one line of /proc/PID/cgroup: "hierarchy-ID:controller-list:path".
// cgroup v2 has the single line "0::PATH"; v1 has one line per hierarchy,
// named hierarchies such as "name=systemd" among the controllers.
type Line struct {
	ID          int
	Controllers []string
	Path        string
}

// maxLines bounds the lines accepted from /proc/PID/cgroup.
const maxLines = 64

// ParseProcCgroup parses the content of /proc/PID/cgroup.
func ParseProcCgroup(data []byte) ([]Line, error) {
	var out []Line
	for len(data) > 0 {
		raw := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			raw, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		if len(raw) == 0 {
			continue
		}
		if len(out) == maxLines {
			return nil, fmt.Errorf("%w: more than %d lines", ErrMalformed, maxLines)
		}
		idStr, rest, ok := bytes.Cut(raw, []byte(":"))
		if !ok {
			return nil, fmt.Errorf("%w: line %d has no ':'", ErrMalformed, len(out)+1)
		}
		ctrl, path, ok := bytes.Cut(rest, []byte(":"))
		if !ok {
			return nil, fmt.Errorf("%w: line %d has one ':'", ErrMalformed, len(out)+1)
		}
		id, err := strconv.Atoi(string(idStr))
		if err != nil || id < 0 {
			return nil, fmt.Errorf("%w: line %d: bad hierarchy id", ErrMalformed, len(out)+1)
		}
		if len(path) == 0 || path[0] != '/' {
			return nil, fmt.Errorf("%w: line %d: path is not absolute", ErrMalformed, len(out)+1)
		}
		l := Line{ID: id, Path: string(path)}
		if len(ctrl) > 0 {
			l.Controllers = strings.Split(string(ctrl), ",")
		}
		out = append(out, l)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrMalformed)
	}
	return out, nil
}

// SystemdPath picks the cgroup path that holds the systemd (and container
// runtime) view of the process: the cgroup v2 line ("0::") when its path is
// not the root, else the v1 "name=systemd" line, else the v2 line, else the
// first line (pure v1 hosts without systemd).
func SystemdPath(lines []Line) string {
	var unified, named string
	for _, l := range lines {
		if l.ID == 0 && len(l.Controllers) == 0 {
			unified = l.Path
		}
		for _, c := range l.Controllers {
			if c == "name=systemd" {
				named = l.Path
			}
		}
	}
	switch {
	case unified != "" && unified != "/":
		return unified
	case named != "":
		return named
	case unified != "":
		return unified
	}
	return lines[0].Path
}
