package sinks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// errNotRunning: the PID file is missing or names no live process.
var errNotRunning = errors.New("not running")

// Action is a validated on_rotate action. Runs are serialized.
type Action struct {
	r       OnRotate
	timeout time.Duration
	log     *slog.Logger
	mu      sync.Mutex
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

func (s *Sink) runAction(ctx context.Context) { s.action.Run(ctx) }

// Run runs the action: the command, then the signal to the PID file's
// process and to the unit. Failures are logged; the files are already in
// place, so the next rotation tries again.
func (a *Action) Run(ctx context.Context) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.r
	s := a
	if len(r.Command) > 0 {
		cctx, cancel := context.WithTimeout(ctx, s.timeout)
		cmd := exec.CommandContext(cctx, r.Command[0], r.Command[1:]...)
		// The command's output is the application's business and may hold
		// anything: it is not logged, only how it ended.
		if err := cmd.Run(); err != nil {
			s.log.Error("on_rotate command failed", "command", r.Command[0], "err", err)
		} else {
			s.log.Info("on_rotate command ran", "command", r.Command[0])
		}
		cancel()
	}
	if r.Signal == "" {
		return
	}
	sig, _ := ParseSignal(r.Signal)
	if r.PIDFile != "" {
		switch err := signalPIDFile(r.PIDFile, sig); {
		case errors.Is(err, errNotRunning):
			s.log.Info("on_rotate: process not running yet; nothing to signal", "pid_file", r.PIDFile)
		case err != nil:
			s.log.Error("on_rotate signal failed", "pid_file", r.PIDFile, "err", err)
		default:
			s.log.Info("on_rotate signal sent", "pid_file", r.PIDFile, "signal", sig.String())
		}
	}
	if r.Unit != "" {
		// systemd knows the unit's main process; systemctl asks it over D-Bus.
		name := "SIG" + strings.TrimPrefix(strings.ToUpper(r.Signal), "SIG")
		cctx, cancel := context.WithTimeout(ctx, s.timeout)
		err := exec.CommandContext(cctx, "systemctl", "kill", "--kill-whom=main", "--signal="+name, r.Unit).Run()
		cancel()
		if err != nil {
			s.log.Error("on_rotate unit signal failed", "unit", r.Unit, "err", err)
		} else {
			s.log.Info("on_rotate signal sent", "unit", r.Unit, "signal", name)
		}
	}
}

// signalPIDFile sends sig to the process whose pid path holds.
func signalPIDFile(path string, sig syscall.Signal) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return errNotRunning
	}
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return fmt.Errorf("pid file %s: no valid pid", path)
	}
	if err := syscall.Kill(pid, sig); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return errNotRunning
		}
		return fmt.Errorf("kill %d: %w", pid, err)
	}
	return nil
}
