package sinks

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/nodeward/nodeward/internal/safefs"
)

// writeFileAt atomically replaces path with data (mode perm, owner uid and
// gid, -1 leaving either as the writer's). The directory is opened with
// safefs.OpenDir (every directory above it checked on its descriptor,
// missing ones created), and the temporary file is created, fsynced and
// renamed relative to that held descriptor with O_NOFOLLOW|O_EXCL: a
// directory or file swapped for a symlink cannot redirect the write.
func writeFileAt(path string, data []byte, perm os.FileMode, uid, gid int) (err error) {
	d, err := safefs.OpenDir(filepath.Dir(path), true)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() { _ = d.Close() }()
	dfd := int(d.Fd())
	base := filepath.Base(path)
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := "." + base + ".tmp-" + hex.EncodeToString(rnd[:])
	// Created with no permission at all; the final mode is set before any
	// data is written, so a key is never readable by others.
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("write %s: create temporary file: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), filepath.Join(d.Name(), tmp))
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = unix.Unlinkat(dfd, tmp, 0)
		}
	}()
	if uid >= 0 || gid >= 0 {
		if err = f.Chown(uid, gid); err != nil {
			return fmt.Errorf("write %s: chown: %w", path, err)
		}
	}
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: chmod: %w", path, err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("write %s: fsync: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("write %s: close: %w", path, err)
	}
	if err = unix.Renameat(dfd, tmp, dfd, base); err != nil {
		return fmt.Errorf("write %s: rename: %w", path, err)
	}
	_ = unix.Fsync(dfd) // the rename is done; a failed directory fsync only weakens durability
	return nil
}

// removeFileAt removes path (never following a symlink: a symlink is
// removed itself) relative to its checked, held directory, and fsyncs the
// directory. A missing file or directory is not an error; removed says
// whether there was something to remove.
func removeFileAt(path string) (removed bool, err error) {
	d, err := safefs.OpenDir(filepath.Dir(path), false)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("remove %s: %w", path, err)
	}
	defer func() { _ = d.Close() }()
	if err := unix.Unlinkat(int(d.Fd()), filepath.Base(path), 0); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("remove %s: %w", path, err)
	}
	_ = unix.Fsync(int(d.Fd()))
	return true, nil
}
