// Package sinks writes a workload's SPIFFE credentials to files for
// applications that only read files (what spiffe-helper does, built in):
// the X.509-SVID chain, its private key, the X.509 bundle, JWT-SVIDs for
// given audiences and the JWT bundle. Files are replaced atomically (temp
// file, fsync, rename) with their final mode and owner, rewritten on every
// rotation, and after each rotation an action runs: a command, a signal to
// the process in a PID file, or a signal to a systemd unit's main process.
//
// Security: the credentials are those of the process that runs the sink
// (the broker sidecar, attested by the agent like any workload); private
// keys and JWT-SVIDs are written 0600 unless configured otherwise, and never
// logged. Files are written relative to a held descriptor of their
// directory, reached by a walk that refuses any directory (or symlink) on
// the way that another user could change (internal/safefs), with O_NOFOLLOW
// and O_EXCL temp files renamed in place. A PID file is trusted only when
// root or we own it and it is not open to writes by others, and only a
// process running the configured binary is signalled. Commands run in their
// own process group, killed whole at their timeout. When the agent revokes
// the identity, its files are removed.
package sinks

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// SVIDFiles is one set of credential files (the `svid_files` list of the
// broker config). The YAML key names are a user contract.
type SVIDFiles struct {
	// Hint picks the X.509-SVID with this hint; default: the first (default) SVID.
	Hint       string    `yaml:"hint"`
	X509SVID   string    `yaml:"x509_svid"`   // certificate chain, PEM
	X509Key    string    `yaml:"x509_key"`    // private key, PKCS#8 PEM
	X509Bundle string    `yaml:"x509_bundle"` // trust bundle, PEM
	JWTBundle  string    `yaml:"jwt_bundle"`  // JWT bundle, JWKS JSON
	JWTSVIDs   []JWTFile `yaml:"jwt_svids"`
	// Mode of certificate and bundle files (octal, default "0644").
	Mode string `yaml:"mode"`
	// KeyMode of the private key and JWT-SVID files (octal, default "0600").
	KeyMode  string   `yaml:"key_mode"`
	Owner    *int     `yaml:"owner"` // uid; default: the writer's
	Group    *int     `yaml:"group"` // gid; default: the writer's
	OnRotate OnRotate `yaml:"on_rotate"`
}

// JWTFile is a JWT-SVID for one audience, written to Path.
type JWTFile struct {
	Audience string `yaml:"audience"`
	Path     string `yaml:"path"`
}

// OnRotate is what runs after the files changed. Any combination may be set.
type OnRotate struct {
	Command []string `yaml:"command"`  // argv, run without a shell
	Signal  string   `yaml:"signal"`   // e.g. HUP or SIGUSR1, for pid_file and unit
	PIDFile string   `yaml:"pid_file"` // signal the process whose pid this file holds
	// Binary is the executable the pid_file's process must run (compared
	// with /proc/PID/exe); required with pid_file.
	Binary  string `yaml:"binary"`
	Unit    string `yaml:"unit"`    // signal this systemd unit's main process (systemctl kill)
	Timeout string `yaml:"timeout"` // bound on command, default 30s
}

// ErrInvalid is wrapped by every configuration error.
var ErrInvalid = errors.New("invalid svid_files entry")

// FieldError names the key (relative to the entry, such as "x509_key" or
// "jwt_svids[0].path") a configuration error is about, so the config
// loader can point at its line.
type FieldError struct {
	Key []any // path of keys and indexes inside the entry
	Msg string
}

// Error returns the message (the caller adds file, line and key).
func (e *FieldError) Error() string { return e.Msg }

// Is makes errors.Is(err, ErrInvalid) hold.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

func fieldErr(msg string, key ...any) error { return &FieldError{Key: key, Msg: msg} }

// Validate checks the entry; errors are *FieldError.
func (f *SVIDFiles) Validate() error {
	paths := map[string]bool{}
	check := func(p string, key ...any) error {
		if p == "" {
			return nil
		}
		if !filepath.IsAbs(p) {
			return fieldErr(fmt.Sprintf("must be an absolute path, got %q", p), key...)
		}
		if paths[filepath.Clean(p)] {
			return fieldErr(fmt.Sprintf("path %q used twice", p), key...)
		}
		paths[filepath.Clean(p)] = true
		return nil
	}
	for _, c := range []struct{ p, key string }{{f.X509SVID, "x509_svid"}, {f.X509Key, "x509_key"},
		{f.X509Bundle, "x509_bundle"}, {f.JWTBundle, "jwt_bundle"}} {
		if err := check(c.p, c.key); err != nil {
			return err
		}
	}
	if (f.X509SVID == "") != (f.X509Key == "") {
		return fieldErr("x509_svid and x509_key go together", "x509_svid")
	}
	for i, j := range f.JWTSVIDs {
		if j.Audience == "" {
			return fieldErr("audience is required", "jwt_svids", i, "audience")
		}
		if j.Path == "" {
			return fieldErr("path is required", "jwt_svids", i)
		}
		if err := check(j.Path, "jwt_svids", i, "path"); err != nil {
			return err
		}
	}
	if len(paths) == 0 {
		return fieldErr("names no file (set x509_svid/x509_key, x509_bundle, jwt_bundle or jwt_svids)")
	}
	if _, err := parseMode(f.Mode, 0o644); err != nil {
		return fieldErr(err.Error(), "mode")
	}
	if _, err := parseMode(f.KeyMode, 0o600); err != nil {
		return fieldErr(err.Error(), "key_mode")
	}
	if err := f.OnRotate.Validate(); err != nil {
		var fe *FieldError
		if errors.As(err, &fe) {
			fe.Key = append([]any{"on_rotate"}, fe.Key...)
		}
		return err
	}
	return nil
}

// Validate checks an on_rotate action; errors are *FieldError with keys
// relative to on_rotate.
func (r OnRotate) Validate() error {
	if r.Signal != "" {
		if _, err := ParseSignal(r.Signal); err != nil {
			return fieldErr(err.Error(), "signal")
		}
		if r.PIDFile == "" && r.Unit == "" {
			return fieldErr("signal needs pid_file or unit", "signal")
		}
	}
	if (r.PIDFile != "" || r.Unit != "") && r.Signal == "" {
		return fieldErr("pid_file and unit need signal")
	}
	if r.PIDFile != "" && !filepath.IsAbs(r.PIDFile) {
		return fieldErr(fmt.Sprintf("must be an absolute path, got %q", r.PIDFile), "pid_file")
	}
	if r.PIDFile != "" && r.Binary == "" {
		return fieldErr("pid_file needs binary (the executable its process must run, e.g. /usr/sbin/nginx)", "pid_file")
	}
	if r.Binary != "" && r.PIDFile == "" {
		return fieldErr("binary goes with pid_file", "binary")
	}
	if r.Binary != "" && !filepath.IsAbs(r.Binary) {
		return fieldErr(fmt.Sprintf("must be an absolute path, got %q", r.Binary), "binary")
	}
	if len(r.Command) > 0 && r.Command[0] == "" {
		return fieldErr("command[0] is empty", "command")
	}
	if _, err := r.timeout(); err != nil {
		return fieldErr(err.Error(), "timeout")
	}
	return nil
}

func (r OnRotate) timeout() (time.Duration, error) {
	if r.Timeout == "" {
		return 30 * time.Second, nil
	}
	d, err := time.ParseDuration(r.Timeout)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("want a positive duration such as 30s, got %q", r.Timeout)
	}
	return d, nil
}

func parseMode(m string, def uint32) (uint32, error) {
	if m == "" {
		return def, nil
	}
	v, err := strconv.ParseUint(m, 8, 32)
	if err != nil || v > 0o777 {
		return 0, fmt.Errorf("mode %q: want an octal permission such as 0600", m)
	}
	return uint32(v), nil
}

var signals = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT, "TERM": syscall.SIGTERM,
	"USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "WINCH": syscall.SIGWINCH, "KILL": syscall.SIGKILL,
}

// ParseSignal parses a signal name such as "HUP" or "SIGUSR1".
func ParseSignal(name string) (syscall.Signal, error) {
	s, ok := signals[strings.TrimPrefix(strings.ToUpper(name), "SIG")]
	if !ok {
		return 0, fmt.Errorf("unknown signal %q (want HUP, USR1, USR2, TERM, INT, QUIT, WINCH or KILL)", name)
	}
	return s, nil
}
