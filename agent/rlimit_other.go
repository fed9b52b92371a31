//go:build !linux

package agent

import "log/slog"

// RaiseFileLimit does nothing off Linux.
func RaiseFileLimit(*slog.Logger) {}

func fileLimit() uint64 { return 0 }
