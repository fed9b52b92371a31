// Package atomicfile writes files so that a reader sees either the old
// content or the new, never a half-written file: the data goes to a temporary
// file in the same directory, is fsynced, given its mode, renamed over the
// target, and the directory is fsynced.
//
// Security: the temporary file is created with the final mode (never wider),
// so a private key is never readable by others, not even for a moment.
package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Write atomically replaces path with data, with file mode perm.
func Write(path string, data []byte, perm os.FileMode) error {
	return WriteOwned(path, data, perm, -1, -1)
}

// WriteOwned is Write that also gives the file to uid and gid (-1 leaves
// either unchanged) before it replaces path, so the file never appears with
// the wrong owner.
func WriteOwned(path string, data []byte, perm os.FileMode, uid, gid int) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, tempName(filepath.Base(path))+"*")
	if err != nil {
		return fmt.Errorf("atomic write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	// CreateTemp uses 0600; set the final mode before any data is written.
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("atomic write %s: chmod: %w", path, err)
	}
	if uid >= 0 || gid >= 0 {
		if err = f.Chown(uid, gid); err != nil {
			return fmt.Errorf("atomic write %s: chown: %w", path, err)
		}
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("atomic write %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("atomic write %s: fsync: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("atomic write %s: close: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("atomic write %s: rename: %w", path, err)
	}
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// tempName is the start of the temporary name Write uses for a file named
// base: "." + base + ".tmp-", then CreateTemp's random digits.
func tempName(base string) string { return "." + base + ".tmp-" }

// CleanTemps removes from dir the temporary files that an interrupted Write
// of one of names (base names) left behind: a crash or SIGKILL between
// creating the temporary file and renaming it leaves it there for good, and
// for a key it holds a private key. Only regular files (never symlinks)
// owned by the effective uid whose names have exactly Write's pattern are
// removed; it returns the paths removed. Run it only while no Write to those
// names can be in progress (for example under a lock on dir).
func CleanTemps(dir string, names ...string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("clean temporary files in %s: %w", dir, err)
	}
	var removed []string
	var errs []error
	for _, e := range ents {
		if !isTemp(e.Name(), names) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		fi, err := os.Lstat(p)
		if err != nil {
			continue // gone already
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !fi.Mode().IsRegular() || !ok || int(st.Uid) != os.Geteuid() {
			continue
		}
		if err := os.Remove(p); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, p)
	}
	if len(errs) > 0 {
		return removed, fmt.Errorf("clean temporary files in %s: %w", dir, errors.Join(errs...))
	}
	return removed, nil
}

// isTemp reports whether name is Write's temporary name for one of names.
func isTemp(name string, names []string) bool {
	for _, base := range names {
		digits, ok := strings.CutPrefix(name, tempName(base))
		if !ok || digits == "" {
			continue
		}
		if strings.Trim(digits, "0123456789") == "" {
			return true
		}
	}
	return false
}
