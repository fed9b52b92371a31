//go:build !linux

package connlimit

import (
	"errors"
	"net"
)

func peerUID(net.Conn) (uint32, error) {
	return 0, errors.New("connlimit: peer credentials are supported on Linux only")
}

// Kind names an accept error for metrics ("other" off Linux).
func Kind(error) string { return "other" }
