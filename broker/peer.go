package broker

import (
	"context"
	"net"
	"os"
	"slices"
	"strconv"

	"github.com/nodeward/nodeward/internal/peercred"
)

// caller is who sent a request: the peer credentials of a Unix socket
// connection, or the owner of the client socket of a loopback TCP
// connection (sock_diag). A caller that cannot be attributed is refused.
type caller struct {
	pid         int32 // 0 when unknown
	uid         uint32
	gid         uint32
	gidKnown    bool
	groups      []uint32 // supplementary groups
	groupsKnown bool
	tcp         bool
}

// binary returns the caller's executable path, for the audit trail.
func (c *caller) binary() string {
	if c == nil || c.pid <= 0 {
		return ""
	}
	p, err := os.Readlink("/proc/" + strconv.Itoa(int(c.pid)) + "/exe")
	if err != nil {
		return ""
	}
	return p
}

// inGroups reports whether the caller's primary or a supplementary group
// is one of gids.
func (c *caller) inGroups(gids []uint32) bool {
	if c.gidKnown && slices.Contains(gids, c.gid) {
		return true
	}
	if c.groupsKnown {
		for _, g := range c.groups {
			if slices.Contains(gids, g) {
				return true
			}
		}
	}
	return false
}

type callerKey struct{}

// callerOf returns the request's caller; nil when it could not be identified.
func callerOf(ctx context.Context) *caller {
	c, _ := ctx.Value(callerKey{}).(*caller)
	return c
}

// ConnContext attaches the caller of each connection: peer credentials
// (SO_PEERCRED, SO_PEERGROUPS) on the Unix socket, the client socket's
// owner (sock_diag) on loopback TCP. A connection whose caller cannot be
// identified carries none, and its requests are refused.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	switch conn := c.(type) {
	case *net.UnixConn:
		info, err := peercred.Get(conn)
		if err != nil {
			return ctx
		}
		_ = info.Close() // only the credentials are needed, not the pidfd
		return context.WithValue(ctx, callerKey{}, &caller{pid: info.PID, uid: info.UID, gid: info.GID, gidKnown: true,
			groups: info.Groups, groupsKnown: info.GroupsKnown})
	case *net.TCPConn:
		local, _ := conn.LocalAddr().(*net.TCPAddr)
		remote, _ := conn.RemoteAddr().(*net.TCPAddr)
		if local == nil || remote == nil || !remote.IP.IsLoopback() {
			return ctx
		}
		cl, err := tcpCaller(local, remote)
		if err != nil {
			return ctx
		}
		return context.WithValue(ctx, callerKey{}, cl)
	}
	return ctx
}
