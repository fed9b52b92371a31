// Package safefs checks that a path the agent trusts (its data directory, a
// key file, the socket directory, a sink's directory, an audit log) cannot be
// changed by another local user, in the manner of sshd's StrictModes.
//
// Security: a path is only as safe as every directory above it. A directory
// writable by another user lets that user rename or replace what lies below
// it, so each component from / down must be owned by root or the effective
// uid and must not be writable by group or others. The one exception is a
// sticky directory such as /tmp: others may add entries to it but cannot
// rename or remove ours, so it may sit above a checked directory (never be
// the checked directory itself). Symlinks along the way are followed and the
// directories they lead to checked the same way; the checks are made when
// called, so callers must hold what they checked (a descriptor, O_NOFOLLOW)
// or re-check, never trust the name later.
package safefs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// ErrUnsafe marks a path another user could change.
var ErrUnsafe = errors.New("unsafe path")

// maxLinks bounds the symlinks followed in one check (as the kernel's 40).
const maxLinks = 40

// Owner reports who may own trusted paths: root and the effective uid.
func trustedOwner(uid uint32) bool { return uid == 0 || int(uid) == os.Geteuid() }

func statOf(fi fs.FileInfo) (*syscall.Stat_t, error) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil, fmt.Errorf("cannot tell the owner of %s: %w", fi.Name(), ErrUnsafe)
	}
	return st, nil
}

// CheckDir checks that dir is a directory that only root or the effective
// user can change, and so is every directory above it (sticky directories
// such as /tmp allowed above it). It follows symlinks and checks their
// targets the same way.
func CheckDir(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("%s: path must be absolute", dir)
	}
	links := 0
	if err := walk(filepath.Clean(dir), &links, true); err != nil {
		return err
	}
	return nil
}

// CheckParents is CheckDir for the directory holding path.
func CheckParents(path string) error { return CheckDir(filepath.Dir(path)) }

// walk checks every component of the clean absolute path p; final says that
// the last component is the checked directory itself (no sticky exception).
func walk(p string, links *int, final bool) error {
	comps := strings.Split(strings.TrimPrefix(p, "/"), "/")
	if p == "/" {
		comps = nil
	}
	cur := "/"
	if err := checkComponent(cur, len(comps) == 0 && final); err != nil {
		return err
	}
	for i, c := range comps {
		next := filepath.Join(cur, c)
		last := i == len(comps)-1
		lst, err := os.Lstat(next)
		if err != nil {
			return fmt.Errorf("%s: %w", next, err)
		}
		if lst.Mode().Type() == fs.ModeSymlink {
			// The link lives in cur, already checked; in a sticky
			// directory its owner could still replace it, so it must be
			// ours or root's. Follow it and check where it leads.
			st, err := statOf(lst)
			if err != nil {
				return err
			}
			if !trustedOwner(st.Uid) {
				return fmt.Errorf("%s is a symlink owned by uid %d (want root or uid %d): %w", next, st.Uid, os.Geteuid(), ErrUnsafe)
			}
			if *links++; *links > maxLinks {
				return fmt.Errorf("%s: too many symlinks: %w", p, ErrUnsafe)
			}
			target, err := os.Readlink(next)
			if err != nil {
				return fmt.Errorf("%s: %w", next, err)
			}
			if !filepath.IsAbs(target) {
				target = filepath.Join(cur, target)
			}
			rest := filepath.Join(append([]string{target}, comps[i+1:]...)...)
			return walk(filepath.Clean(rest), links, final)
		}
		if err := checkInfo(next, lst, last && final); err != nil {
			return err
		}
		cur = next
	}
	return nil
}

func checkComponent(name string, final bool) error {
	fi, err := os.Lstat(name)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return checkInfo(name, fi, final)
}

// checkInfo checks one directory of a walk.
func checkInfo(name string, fi fs.FileInfo, final bool) error {
	if !fi.IsDir() {
		return fmt.Errorf("%s: not a directory", name)
	}
	st, err := statOf(fi)
	if err != nil {
		return err
	}
	if !trustedOwner(st.Uid) {
		return fmt.Errorf("%s is owned by uid %d (want root or uid %d): %w", name, st.Uid, os.Geteuid(), ErrUnsafe)
	}
	perm := fi.Mode().Perm()
	if perm&0o022 != 0 && (final || fi.Mode()&fs.ModeSticky == 0) {
		return fmt.Errorf("%s (mode %v) is writable by group or others: %w", name, perm, ErrUnsafe)
	}
	return nil
}

// CheckFileInfo checks what Lstat or Fstat said of a file the agent trusts:
// a regular file (not a symlink), owned by root or the effective uid, not
// writable by group or others; private files (keys) must not be readable by
// them either.
func CheckFileInfo(name string, fi fs.FileInfo, private bool) error {
	if fi.Mode().Type() == fs.ModeSymlink {
		return fmt.Errorf("%s is a symlink: %w", name, ErrUnsafe)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file: %w", name, ErrUnsafe)
	}
	st, err := statOf(fi)
	if err != nil {
		return err
	}
	if !trustedOwner(st.Uid) {
		return fmt.Errorf("%s is owned by uid %d (want root or uid %d): %w", name, st.Uid, os.Geteuid(), ErrUnsafe)
	}
	mask := fs.FileMode(0o022)
	if private {
		mask = 0o077
	}
	if perm := fi.Mode().Perm(); perm&mask != 0 {
		return fmt.Errorf("%s (mode %v) is open to group or others: %w", name, perm, ErrUnsafe)
	}
	return nil
}

// CheckFile is CheckFileInfo on os.Lstat(path).
func CheckFile(path string, private bool) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	return CheckFileInfo(path, fi, private)
}

// OpenFile opens path for reading without following a symlink in its last
// component and without blocking on a FIFO, and checks the open file as
// CheckFileInfo does. The caller must Close it.
func OpenFile(path string, private bool) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%s is a symlink: %w", path, ErrUnsafe)
		}
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil {
		err = CheckFileInfo(path, fi, private)
	}
	if err != nil {
		_ = f.Close() // the error that matters is err
		return nil, err
	}
	return f, nil
}
