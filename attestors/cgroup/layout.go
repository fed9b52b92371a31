package cgroup

import (
	"strings"

	"github.com/nodeward/nodeward/attestors/selector"
)

// Selectors derives the cgroup, systemd, container and Kubernetes selectors
// of a process from its cgroup path (the systemd view, see SystemdPath).
//
// Layouts understood (see testdata/ for one real example each):
//   - systemd system units and slices: /system.slice/web.service
//   - systemd user units: /user.slice/user-1000.slice/user@1000.service/app.slice/x.service
//   - Docker, cgroupfs driver: /docker/<id>; systemd driver: /system.slice/docker-<id>.scope
//   - containerd CRI: cri-containerd-<id>.scope
//   - CRI-O: crio-<id>.scope (the conmon monitor, crio-conmon-<id>.scope, is not the container)
//   - Podman: libpod-<id>.scope (rootful and rootless), libpod-payload-<id>, libpod-conmon-<id>.scope (conmon)
//   - Kubernetes, cgroupfs driver: /kubepods/<qos>/pod<uid>/<id>, /kubepods/pod<uid>/<id> (guaranteed)
//   - Kubernetes, systemd driver: kubepods-<qos>-pod<uid_with_underscores>.slice, kubepods-pod<uid>.slice
//   - nested prefixes (kind, k3s, a node inside a container): the innermost
//     container and pod in the path are the workload's.
func Selectors(path string) []selector.Selector {
	sels := []selector.Selector{selector.New("cgroup", "path", path)}
	parts := strings.Split(strings.Trim(path, "/"), "/")
	if len(parts) == 1 && parts[0] == "" {
		parts = nil
	}
	sels = append(sels, systemdSelectors(parts)...)
	sels = append(sels, containerSelectors(parts)...)
	sels = append(sels, k8sSelectors(parts)...)
	return selector.Sort(sels)
}

// isUnit reports whether a path component names a systemd unit other than a slice.
func isUnit(c string) bool {
	for _, suf := range []string{".service", ".scope", ".socket", ".mount", ".swap"} {
		if strings.HasSuffix(c, suf) && len(c) > len(suf) {
			return true
		}
	}
	return false
}

func systemdSelectors(parts []string) []selector.Selector {
	var sels []selector.Selector
	// Split at user@UID.service: above it is the system manager's tree, below
	// it the user manager's.
	system, user := parts, []string(nil)
	for i, c := range parts {
		if uid, ok := strings.CutPrefix(c, "user@"); ok && strings.HasSuffix(uid, ".service") {
			uid = strings.TrimSuffix(uid, ".service")
			if isDigits(uid) {
				sels = append(sels, selector.New("systemd", "uid", uid))
			}
			system, user = parts[:i+1], parts[i+1:]
			break
		}
	}
	if unit, slice := unitAndSlice(system); unit != "" || slice != "" {
		if unit != "" {
			sels = append(sels, selector.New("systemd", "unit", unit))
		}
		if slice != "" {
			sels = append(sels, selector.New("systemd", "slice", slice))
		}
	}
	if unit, slice := unitAndSlice(user); unit != "" || slice != "" {
		if unit != "" {
			sels = append(sels, selector.New("systemd", "user-unit", unit))
		}
		if slice != "" {
			sels = append(sels, selector.New("systemd", "user-slice", slice))
		}
	}
	return sels
}

// unitAndSlice returns the first unit in parts (a process belongs to the
// outermost unit; cgroups below a unit are its own sub-groups, such as a
// service's delegated subtree) and the slice that holds it (the deepest
// slice above the unit, or the deepest slice when there is no unit).
func unitAndSlice(parts []string) (unit, slice string) {
	for _, c := range parts {
		if strings.HasSuffix(c, ".slice") && len(c) > len(".slice") {
			slice = c
			continue
		}
		if isUnit(c) {
			return c, slice
		}
	}
	return "", slice
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func isContainerID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// containerIn recognises one path component as a container's cgroup and
// returns its id and runtime ("" when the layout does not say).
func containerIn(c string, parent string) (id, runtime string, ok bool) {
	prefixes := []struct{ prefix, runtime string }{
		{"docker-", "docker"},
		{"cri-containerd-", "containerd"},
		{"crio-", "cri-o"},
		{"libpod-", "podman"},
	}
	if base, found := strings.CutSuffix(c, ".scope"); found {
		for _, p := range prefixes {
			if rest, ok := strings.CutPrefix(base, p.prefix); ok && isContainerID(rest) {
				return rest, p.runtime, true
			}
		}
		return "", "", false // crio-conmon-<id>, libpod-conmon-<id>, other scopes
	}
	if rest, ok := strings.CutPrefix(c, "libpod-payload-"); ok && isContainerID(rest) {
		return rest, "podman", true
	}
	if rest, ok := strings.CutPrefix(c, "libpod-"); ok && isContainerID(rest) {
		return rest, "podman", true // podman with the cgroupfs manager: /libpod_parent/libpod-<id>
	}
	if isContainerID(c) {
		switch {
		case parent == "docker":
			return c, "docker", true
		case strings.HasPrefix(parent, "pod"), parent == "kubepods":
			return c, "", true // Kubernetes cgroupfs driver: the runtime is not in the path
		case parent == "crio":
			return c, "cri-o", true
		}
	}
	return "", "", false
}

func containerSelectors(parts []string) []selector.Selector {
	var id, runtime string
	for i, c := range parts {
		parent := ""
		if i > 0 {
			parent = parts[i-1]
		}
		if cid, rt, ok := containerIn(c, parent); ok {
			id, runtime = cid, rt // keep the innermost
		}
	}
	if id == "" {
		return nil
	}
	sels := []selector.Selector{selector.New("container", "id", id)}
	if runtime != "" {
		sels = append(sels, selector.New("container", "runtime", runtime))
	}
	return sels
}

func k8sSelectors(parts []string) []selector.Selector {
	var uid, qos string
	for i, c := range parts {
		// cgroupfs driver: kubepods/[burstable|besteffort/]pod<uid>
		if u, ok := strings.CutPrefix(c, "pod"); ok && i > 0 && isPodUID(u) {
			switch parts[i-1] {
			case "kubepods":
				uid, qos = u, "guaranteed"
			case "burstable", "besteffort":
				if i > 1 && parts[i-2] == "kubepods" {
					uid, qos = u, parts[i-1]
				}
			}
			continue
		}
		// systemd driver: [kubelet-]kubepods[-burstable|-besteffort]-pod<uid_>.slice
		base, ok := strings.CutSuffix(c, ".slice")
		if !ok {
			continue
		}
		base = strings.TrimPrefix(base, "kubelet-")
		rest, ok := strings.CutPrefix(base, "kubepods-")
		if !ok {
			continue
		}
		q := "guaranteed"
		for _, cls := range []string{"burstable", "besteffort"} {
			if r, ok := strings.CutPrefix(rest, cls+"-"); ok {
				q, rest = cls, r
			}
		}
		if u, ok := strings.CutPrefix(rest, "pod"); ok {
			u = strings.ReplaceAll(u, "_", "-")
			if isPodUID(u) {
				uid, qos = u, q
			}
		}
	}
	if uid == "" {
		return nil
	}
	return []selector.Selector{selector.New("k8s", "pod-uid", uid), selector.New("k8s", "qos", qos)}
}

// isPodUID accepts a Kubernetes pod UID: a UUID in its usual form, or a
// static pod's 32-hex-digit config hash.
func isPodUID(s string) bool {
	if len(s) == 32 {
		return isHex(s)
	}
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch i {
		case 8, 13, 18, 23:
			if s[i] != '-' {
				return false
			}
		default:
			if !isHex(s[i : i+1]) {
				return false
			}
		}
	}
	return true
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
