package main

import (
	"context"
	"log/slog"
	"net"
	"time"

	"github.com/nodeward/nodeward/internal/systemd"
)

// statusEvery is how often STATUS= is refreshed when no watchdog is set.
const statusEvery = 30 * time.Second

// takeSocket returns the socket-activated listener called name, logging
// which one is used; nil when systemd passed none (listen on the config's
// path then).
func takeSocket(socks systemd.Sockets, name, configured string, log *slog.Logger) (net.Listener, error) {
	l, err := socks.Take(name)
	if err != nil || l == nil {
		return nil, err
	}
	addr := l.Addr().String()
	if configured != "" && addr != configured {
		log.Warn("socket-activated socket differs from the configured path; serving the activated one",
			"socket", name, "activated", addr, "configured", configured)
	} else {
		log.Info("serving a socket-activated socket", "socket", name, "path", addr)
	}
	return l, nil
}

// notifyLifecycle tells systemd READY=1 once every channel in serving is
// closed, keeps STATUS= (and WATCHDOG=1 when WatchdogSec is set) going while
// healthy, and sends STOPPING=1 when ctx ends.
func notifyLifecycle(ctx context.Context, n *systemd.Notifier, healthy func() bool, summary func() string, serving ...<-chan struct{}) {
	if !n.Enabled() {
		return
	}
	go func() {
		for _, ch := range serving {
			select {
			case <-ch:
			case <-ctx.Done():
				n.Stopping()
				return
			}
		}
		n.Ready(summary())
		go n.Watchdog(ctx, healthy, summary, statusEvery)
		<-ctx.Done()
		n.Stopping()
	}()
}

func warnLeftover(socks systemd.Sockets, log *slog.Logger) {
	if left := socks.Leftover(); len(left) > 0 {
		log.Warn("socket-activated sockets not used (check FileDescriptorName=)", "names", left)
	}
}
