// Package systemd connects nodeward's daemons to systemd: socket activation
// (LISTEN_FDS, via go-systemd's activation) and the sd_notify protocol
// (NOTIFY_SOCKET: READY=1, RELOADING=1, STOPPING=1, STATUS=, WATCHDOG=1, via
// go-systemd's daemon). Without systemd every function here is a no-op:
// nodeward runs the same with or without it.
//
// Security: an inherited socket is used as it is; its path, mode and owner
// are the socket unit's business (SocketMode=, SocketUser=), not re-checked.
package systemd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
)

// Socket names (FileDescriptorName= in the socket units) nodeward looks for.
const (
	WorkloadSocket = "workload"
	BrokerSocket   = "broker"
)

// ErrUnexpectedSocket: systemd passed a socket nodeward cannot use.
var ErrUnexpectedSocket = errors.New("unexpected socket-activated file descriptor")

// Sockets are the listeners systemd passed to this process, by name.
type Sockets map[string][]net.Listener

// Activated returns the socket-activated listeners (nil when the process was
// not socket-activated) and clears LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES
// so children do not inherit them. Call it once, early.
func Activated() (Sockets, error) {
	ls, err := activation.ListenersWithNames()
	if err != nil {
		return nil, fmt.Errorf("socket activation: %w", err)
	}
	if len(ls) == 0 {
		return nil, nil
	}
	return Sockets(ls), nil
}

// Take returns the Unix listener named name and removes it from s. A unit
// that passes exactly one socket without naming it (no
// FileDescriptorName=) gives that socket to whoever asks first. nil, nil:
// systemd passed no such socket.
func (s Sockets) Take(name string) (*net.UnixListener, error) {
	ls := s[name]
	if len(ls) == 0 && len(s) == 1 {
		for n, only := range s {
			if len(only) == 1 && n != WorkloadSocket && n != BrokerSocket {
				name, ls = n, only
			}
		}
	}
	if len(ls) == 0 {
		return nil, nil
	}
	if len(ls) > 1 {
		return nil, fmt.Errorf("%w: %d sockets named %q, want one", ErrUnexpectedSocket, len(ls), name)
	}
	delete(s, name)
	ul, ok := ls[0].(*net.UnixListener)
	if !ok {
		return nil, fmt.Errorf("%w: %q is a %s socket, want a Unix stream socket (ListenStream=/path)",
			ErrUnexpectedSocket, name, ls[0].Addr().Network())
	}
	// Closing the listener must not unlink the socket file: it belongs to
	// the socket unit, which keeps listening while the service restarts.
	ul.SetUnlinkOnClose(false)
	return ul, nil
}

// Leftover reports sockets nobody took, so a misconfigured unit is noticed.
func (s Sockets) Leftover() []string {
	var names []string
	for n := range s {
		names = append(names, n)
	}
	return names
}

// Notifier speaks the sd_notify protocol when NOTIFY_SOCKET is set and does
// nothing otherwise.
type Notifier struct {
	log     *slog.Logger
	enabled bool
}

// NewNotifier returns a Notifier for this process.
func NewNotifier(log *slog.Logger) *Notifier {
	return &Notifier{log: log, enabled: os.Getenv("NOTIFY_SOCKET") != ""}
}

// Enabled reports whether systemd listens for notifications.
func (n *Notifier) Enabled() bool { return n.enabled }

func (n *Notifier) send(state string) {
	if !n.enabled {
		return
	}
	if _, err := daemon.SdNotify(false, state); err != nil {
		n.log.Warn("sd_notify failed", "err", err)
	}
}

// Ready tells systemd the service is up (READY=1) with a status line.
func (n *Notifier) Ready(status string) { n.send(daemon.SdNotifyReady + "\nSTATUS=" + status) }

// Status updates the status line systemctl status shows.
func (n *Notifier) Status(status string) { n.send("STATUS=" + status) }

// Reloading tells systemd a reload started (RELOADING=1 with the
// MONOTONIC_USEC that Type=notify-reload requires); follow it with Ready.
func (n *Notifier) Reloading() {
	n.send(daemon.SdNotifyReloading + "\n" + daemon.SdNotifyMonotonicUsec())
}

// Stopping tells systemd the service is shutting down (STOPPING=1).
func (n *Notifier) Stopping() { n.send(daemon.SdNotifyStopping) }

// Watchdog sends WATCHDOG=1 at half the unit's WatchdogSec while healthy()
// holds, and refreshes the status line from status() on the same beat,
// until ctx ends. Without WatchdogSec it only refreshes the status every
// statusEvery. A service that stops being healthy stops pinging, so systemd
// restarts it.
func (n *Notifier) Watchdog(ctx context.Context, healthy func() bool, status func() string, statusEvery time.Duration) {
	if !n.enabled {
		return
	}
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		n.log.Warn("watchdog settings", "err", err)
	}
	ping := interval > 0
	if ping {
		interval /= 2
	} else {
		interval = statusEvery
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if !healthy() {
				n.log.Warn("not healthy: withholding the watchdog ping")
				continue
			}
			state := "STATUS=" + status()
			if ping {
				state = daemon.SdNotifyWatchdog + "\n" + state
			}
			n.send(state)
		}
	}
}
