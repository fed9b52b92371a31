// Package atomicfile writes files so that a reader sees either the old
// content or the new, never a half-written file: the data goes to a temporary
// file in the same directory, is fsynced, given its mode, renamed over the
// target, and the directory is fsynced.
//
// Security: the temporary file is created with the final mode (never wider),
// so a private key is never readable by others, not even for a moment.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
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
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
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
