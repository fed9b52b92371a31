package unix

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
)

// hashChunk is how much is read between two deadline checks.
const hashChunk = 128 << 10

// errTooLarge: the file grew past MaxHashBytes while it was read.
var errTooLarge = errors.New("binary larger than the hash limit")

// fileKey identifies one version of a file: a rewrite in place changes at
// least ctime, which no file owner can set.
type fileKey struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64 // nanoseconds
}

// hash returns the hex SHA-256 of the binary behind exe (/proc/PID/exe,
// opened itself so the running binary is read whatever happened to its
// path), or "" when there is none to give: no permission, not a regular
// file, larger than MaxHashBytes, slower than HashTimeout, changed while
// read. It fails only when ctx ends. Results are cached by fileKey.
func (a *Attestor) hash(ctx context.Context, exe string, pid int32) (string, error) {
	// Fast path: stat follows the magic link to the very file the process
	// runs, as fstat of an opened /proc/PID/exe would, without open/close.
	if fi, err := os.Stat(exe); err == nil {
		if key, ok := keyOf(fi); ok {
			if sum, ok := a.hashes.Get(key); ok {
				return sum, nil
			}
		}
	}
	f, err := os.Open(exe)
	if err != nil {
		a.log.Debug("unix attestor: cannot open the process's exe: no sha256 selector", "pid", pid, "err", err)
		return "", nil
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		a.log.Debug("unix attestor: cannot stat the process's exe: no sha256 selector", "pid", pid, "err", err)
		return "", nil
	}
	key, ok := keyOf(fi)
	if !ok {
		return "", nil
	}
	if sum, ok := a.hashes.Get(key); ok {
		return sum, nil
	}
	if !fi.Mode().IsRegular() {
		a.log.Debug("unix attestor: exe is not a regular file: no sha256 selector", "pid", pid)
		return "", nil
	}
	if fi.Size() > a.cfg.MaxHashBytes {
		a.log.Warn("unix attestor: binary larger than the hash limit: no sha256 selector",
			"pid", pid, "size", fi.Size(), "limit", a.cfg.MaxHashBytes)
		return "", nil
	}
	if a.hashRun != nil {
		a.hashRun()
	}
	hctx, cancel := context.WithTimeout(ctx, a.cfg.HashTimeout)
	defer cancel()
	sum, err := hashFile(hctx, f, a.cfg.MaxHashBytes)
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return "", fmt.Errorf("hash binary: %w", context.Cause(ctx))
	case errors.Is(err, context.DeadlineExceeded):
		a.log.Warn("unix attestor: hashing the binary took too long: no sha256 selector",
			"pid", pid, "size", fi.Size(), "timeout", a.cfg.HashTimeout)
		return "", nil
	case errors.Is(err, errTooLarge):
		a.log.Warn("unix attestor: binary grew past the hash limit: no sha256 selector", "pid", pid)
		return "", nil
	default:
		a.log.Debug("unix attestor: cannot read the process's exe: no sha256 selector", "pid", pid, "err", err)
		return "", nil
	}
	// Cache only what was read from one unchanged version of the file.
	fi, err = f.Stat()
	if err != nil {
		a.log.Debug("unix attestor: cannot stat the process's exe: no sha256 selector", "pid", pid, "err", err)
		return "", nil
	}
	if after, ok := keyOf(fi); !ok || after != key {
		a.log.Warn("unix attestor: binary changed while it was hashed: no sha256 selector", "pid", pid)
		return "", nil
	}
	a.hashes.Add(key, sum)
	return sum, nil
}

// hashFile hashes r, at most limit bytes, checking ctx between chunks. A
// single read that blocks (a hung network file system) is not interrupted;
// the agent's own attestation deadline bounds that case.
func hashFile(ctx context.Context, r io.Reader, limit int64) (string, error) {
	h := sha256.New()
	buf := make([]byte, hashChunk)
	lr := io.LimitReader(r, limit+1)
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		m, err := lr.Read(buf)
		h.Write(buf[:m])
		n += int64(m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", err
		}
	}
	if n > limit {
		return "", errTooLarge
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
