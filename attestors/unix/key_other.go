//go:build !linux

package unix

import "io/fs"

// keyOf is only implemented on Linux, the only system with /proc/PID/exe;
// elsewhere no binary is hashed.
func keyOf(fs.FileInfo) (fileKey, bool) { return fileKey{}, false }
