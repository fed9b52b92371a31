package config

import (
	"fmt"
	"os"
	"path/filepath"
)

// DefaultSocketPath is /run/nodeward/workload.sock when running as root
// (euid 0), else $XDG_RUNTIME_DIR/nodeward/workload.sock when
// XDG_RUNTIME_DIR is set (to an absolute path), else
// $TMPDIR/nodeward-UID/workload.sock.
func DefaultSocketPath() string {
	return defaultSocketPath(os.Geteuid(), os.Getenv)
}

// DefaultDataDir is /var/lib/nodeward when running as root (euid 0), else
// $XDG_STATE_HOME/nodeward, else ~/.local/state/nodeward (and
// $TMPDIR/nodeward-UID-state when there is no home directory either).
func DefaultDataDir() string {
	return defaultDataDir(os.Geteuid(), os.Getenv)
}

func defaultSocketPath(euid int, getenv func(string) string) string {
	if euid == 0 {
		return "/run/nodeward/workload.sock"
	}
	if d := getenv("XDG_RUNTIME_DIR"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "nodeward", "workload.sock")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("nodeward-%d", euid), "workload.sock")
}

func defaultDataDir(euid int, getenv func(string) string) string {
	if euid == 0 {
		return "/var/lib/nodeward"
	}
	if d := getenv("XDG_STATE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "nodeward")
	}
	if h := getenv("HOME"); h != "" && filepath.IsAbs(h) {
		return filepath.Join(h, ".local", "state", "nodeward")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("nodeward-%d-state", euid))
}
