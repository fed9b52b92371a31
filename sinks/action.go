package sinks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Event says why an action runs; the command sees it in NODEWARD_SINK_EVENT.
type Event string

const (
	// EventRotate: the files were (re)written.
	EventRotate Event = "rotate"
	// EventRevoked: the identity was revoked and its files removed.
	EventRevoked Event = "revoked"
)

// Action is a validated on_rotate action. Runs are serialized; runs begun
// with Start are tracked so that Wait can wait for them.
type Action struct {
	r       OnRotate
	timeout time.Duration
	log     *slog.Logger
	mu      sync.Mutex
	runs    sync.WaitGroup
}

// NewAction validates r and returns its action.
func NewAction(r OnRotate, log *slog.Logger) (*Action, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	timeout, _ := r.timeout()
	return &Action{r: r, timeout: timeout, log: log}, nil
}

// Empty reports whether the action does nothing.
func (a *Action) Empty() bool {
	return len(a.r.Command) == 0 && a.r.Signal == ""
}

// Start runs the action for a rotation in a new goroutine and returns at
// once; Wait waits for every run Start began. Cancelling ctx kills a
// running command's whole process group.
func (a *Action) Start(ctx context.Context) { a.StartEvent(ctx, EventRotate) }

// StartEvent is Start for the given event.
func (a *Action) StartEvent(ctx context.Context, ev Event) {
	a.runs.Add(1)
	go func() {
		defer a.runs.Done()
		a.RunEvent(ctx, ev)
	}()
}

// Wait waits until every run begun by Start has ended.
func (a *Action) Wait() { a.runs.Wait() }

func (s *Sink) runAction(ctx context.Context, ev Event) { s.action.RunEvent(ctx, ev) }

// Run runs the action for a rotation and returns when it is done.
func (a *Action) Run(ctx context.Context) { a.RunEvent(ctx, EventRotate) }

// RunEvent runs the action: the command, then the signal to the PID file's
// process and to the unit. Failures are logged; the files are already in
// place, so the next rotation tries again.
func (a *Action) RunEvent(ctx context.Context, ev Event) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.r
	s := a
	if len(r.Command) > 0 {
		cctx, cancel := context.WithTimeout(ctx, s.timeout)
		err := runCommand(cctx, r.Command, ev)
		cancel()
		// The command's output is the application's business and may hold
		// anything: it is not logged, only how it ended.
		if err != nil {
			s.log.Error("on_rotate command failed", "command", r.Command[0], "event", string(ev), "err", err)
		} else {
			s.log.Info("on_rotate command ran", "command", r.Command[0], "event", string(ev))
		}
	}
	if r.Signal == "" {
		return
	}
	sig, _ := ParseSignal(r.Signal)
	if r.PIDFile != "" {
		switch err := signalPIDFile(r.PIDFile, r.Binary, sig); {
		case errors.Is(err, errNotRunning):
			s.log.Info("on_rotate: process not running yet; nothing to signal", "pid_file", r.PIDFile)
		case err != nil:
			s.log.Error("on_rotate signal refused", "pid_file", r.PIDFile, "err", err)
		default:
			s.log.Info("on_rotate signal sent", "pid_file", r.PIDFile, "signal", sig.String())
		}
	}
	if r.Unit != "" {
		// systemd knows the unit's main process; systemctl asks it over D-Bus.
		name := "SIG" + strings.TrimPrefix(strings.ToUpper(r.Signal), "SIG")
		cctx, cancel := context.WithTimeout(ctx, s.timeout)
		err := runCommand(cctx, []string{"systemctl", "kill", "--kill-whom=main", "--signal=" + name, r.Unit}, ev)
		cancel()
		if err != nil {
			s.log.Error("on_rotate unit signal failed", "unit", r.Unit, "err", err)
		} else {
			s.log.Info("on_rotate signal sent", "unit", r.Unit, "signal", name)
		}
	}
}

// runCommand runs argv in its own process group, with NODEWARD_SINK_EVENT
// set; when ctx ends (timeout or cancel) the whole group is killed, so a
// daemon the command forked does not survive it.
func runCommand(ctx context.Context, argv []string, ev Event) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "NODEWARD_SINK_EVENT="+string(ev))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// The group's id is the child's pid (Setpgid with Pgid 0).
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w", argv[0], err)
	}
	return nil
}
