package agent

import (
	"log/slog"

	"golang.org/x/sys/unix"
)

// RaiseFileLimit raises the soft RLIMIT_NOFILE to the hard limit: every
// Workload API connection holds two descriptors (socket and pidfd), and a
// low soft limit (a shell's `ulimit -n 1024`, or less) would otherwise
// starve callers long before the limits section does.
func RaiseFileLimit(log *slog.Logger) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		log.Warn("cannot read the file descriptor limit", "err", err)
		return
	}
	if rl.Cur >= rl.Max {
		return
	}
	old := rl.Cur
	rl.Cur = rl.Max
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		log.Warn("cannot raise the file descriptor limit", "soft", old, "hard", rl.Max, "err", err)
		return
	}
	log.Debug("raised the file descriptor limit", "from", old, "to", rl.Cur)
}

// fileLimit returns the soft RLIMIT_NOFILE (0 if unknown).
func fileLimit() uint64 {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == unix.RLIM_INFINITY {
		return 0
	}
	return rl.Cur
}
