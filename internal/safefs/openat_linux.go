package safefs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// OpenDir opens dir and returns a held descriptor of it, having checked
// every directory on the way as CheckDir does, but on the descriptors
// themselves: each component is opened relative to its parent with
// O_NOFOLLOW, so a directory swapped for a symlink after a check cannot
// redirect what is opened. Symlinks on the way must be owned by root or the
// effective uid; they are followed and their targets walked the same way.
// With create, missing directories are made (mode 0755, owned by the
// effective uid) as the walk reaches them. Files written or removed with
// the *at calls relative to the returned descriptor stay inside the checked
// directory. The caller must Close it.
func OpenDir(dir string, create bool) (*os.File, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("%s: path must be absolute", dir)
	}
	fd, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /: %w", err)
	}
	comps := splitPath(filepath.Clean(dir))
	if err := checkFd(fd, "/", len(comps) == 0); err != nil {
		_ = unix.Close(fd)
		return nil, err
	}
	cur, links := "/", 0
	for len(comps) > 0 {
		c := comps[0]
		comps = comps[1:]
		last := len(comps) == 0
		next := filepath.Join(cur, c)
		nfd, err := unix.Openat(fd, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) && create {
			if err = unix.Mkdirat(fd, c, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
				_ = unix.Close(fd)
				return nil, fmt.Errorf("mkdir %s: %w", next, err)
			}
			nfd, err = unix.Openat(fd, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		}
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			// A symlink (or not a directory at all): look at the entry itself.
			var st unix.Stat_t
			if serr := unix.Fstatat(fd, c, &st, unix.AT_SYMLINK_NOFOLLOW); serr != nil {
				_ = unix.Close(fd)
				return nil, fmt.Errorf("%s: %w", next, serr)
			}
			if st.Mode&unix.S_IFMT != unix.S_IFLNK {
				_ = unix.Close(fd)
				return nil, fmt.Errorf("%s: not a directory", next)
			}
			if !trustedOwner(st.Uid) {
				_ = unix.Close(fd)
				return nil, fmt.Errorf("%s is a symlink owned by uid %d (want root or uid %d): %w", next, st.Uid, os.Geteuid(), ErrUnsafe)
			}
			if links++; links > maxLinks {
				_ = unix.Close(fd)
				return nil, fmt.Errorf("%s: too many symlinks: %w", dir, ErrUnsafe)
			}
			target, rerr := readlinkat(fd, c)
			if rerr != nil {
				_ = unix.Close(fd)
				return nil, fmt.Errorf("%s: %w", next, rerr)
			}
			if filepath.IsAbs(target) {
				// Start again from /, then the target, then the rest.
				_ = unix.Close(fd)
				if fd, err = unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
					return nil, fmt.Errorf("open /: %w", err)
				}
				cur = "/"
				comps = append(splitPath(filepath.Clean(target)), comps...)
				if err := checkFd(fd, "/", len(comps) == 0); err != nil {
					_ = unix.Close(fd)
					return nil, err
				}
				continue
			}
			comps = append(splitPath(target), comps...)
			continue
		}
		if err != nil {
			_ = unix.Close(fd)
			return nil, fmt.Errorf("open %s: %w", next, err)
		}
		_ = unix.Close(fd)
		fd, cur = nfd, next
		if err := checkFd(fd, cur, last); err != nil {
			_ = unix.Close(fd)
			return nil, err
		}
	}
	return os.NewFile(uintptr(fd), filepath.Clean(dir)), nil
}

func splitPath(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}

// checkFd checks an open directory as checkInfo does.
func checkFd(fd int, name string, final bool) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("%s: not a directory", name)
	}
	if !trustedOwner(st.Uid) {
		return fmt.Errorf("%s is owned by uid %d (want root or uid %d): %w", name, st.Uid, os.Geteuid(), ErrUnsafe)
	}
	perm := st.Mode & 0o777
	if perm&0o022 != 0 && (final || st.Mode&unix.S_ISVTX == 0) {
		return fmt.Errorf("%s (mode %#o) is writable by group or others: %w", name, perm, ErrUnsafe)
	}
	return nil
}

func readlinkat(fd int, name string) (string, error) {
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(fd, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// OpenFileAt opens name inside the held directory dir for reading, without
// following a symlink and without blocking on a FIFO, and checks the open
// file as CheckFileInfo does. The caller must Close it.
func OpenFileAt(dir *os.File, name string, private bool) (*os.File, error) {
	full := filepath.Join(dir.Name(), name)
	fd, err := unix.Openat(int(dir.Fd()), name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("%s is a symlink: %w", full, ErrUnsafe)
		}
		return nil, &os.PathError{Op: "open", Path: full, Err: err}
	}
	f := os.NewFile(uintptr(fd), full)
	fi, err := f.Stat()
	if err == nil {
		err = CheckFileInfo(full, fi, private)
	}
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return f, nil
}
