package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"
)

// sigpipes counts the SIGPIPEs a daemon received (a reader of its stdout
// or stderr went away).
var sigpipes atomic.Uint64

// survivePipes keeps a daemon alive when the reader of its stdout (the
// default audit sink) or stderr goes away. Without it the Go runtime exits
// on SIGPIPE from a write to fd 1 or 2, which systemd's Restart=on-failure
// counts as a clean stop. With SIGPIPE delivered to a channel the write
// fails with EPIPE instead: audit records lost that way are counted by the
// audit logger (nodeward_audit_write_errors_total), and the SIGPIPEs are
// logged at most once a minute with their count.
func survivePipes(ctx context.Context, log *slog.Logger) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGPIPE)
	go func() {
		defer signal.Stop(ch)
		var last time.Time
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				n := sigpipes.Add(1)
				if time.Since(last) >= time.Minute {
					last = time.Now()
					log.Warn("SIGPIPE: a reader of stdout or stderr went away; writes there fail with EPIPE (lost audit records are counted)",
						"sigpipes", n)
				}
			}
		}
	}()
}
