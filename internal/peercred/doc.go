// Package peercred identifies the process on the other end of a Unix socket
// connection from kernel-supplied credentials (SO_PEERCRED) and pins it with
// a pidfd (SO_PEERPIDFD on Linux >= 6.5, pidfd_open otherwise), so that a
// process that exits and whose PID is reused can never be taken for another.
// It also prepares the Workload API socket (Listen) and carries the
// credentials through gRPC (TransportCredentials, FromContext).
//
// Security assumptions:
//   - Nothing the peer says about itself is trusted; PID, UID and GID come
//     from the kernel as of connect(2).
//   - The pidfd from SO_PEERPIDFD refers to the process that connected,
//     whatever happened to its PID since. With the pidfd_open fallback
//     (kernels < 6.5) there is a window between connect and pidfd_open in
//     which the peer could exit and its PID be reused; on kernels that have
//     SO_PEERPIDFD, a peer reaped before Get is never re-opened by PID: Get
//     fails with ErrProcessGone (6.5 to 6.15), or pins the dead process so
//     that CheckAlive reports it gone (6.16 and later).
//   - Whoever reads /proc/PID for a peer must call CheckAlive afterwards: if
//     the peer exited in between, its PID may already belong to another
//     process and what was read must be discarded (fail closed).
//   - What the peer was is pinned at accept: its effective uid and gid
//     (SO_PEERCRED), its supplementary groups (SO_PEERGROUPS) and its binary
//     (device and inode of /proc/PID/exe). A connection handed to another
//     process whose connecting process then exec'd a different binary is
//     caught by CheckExec; the caller compares the ids with what it
//     attested. Not caught: an exec between connect(2) and the agent's
//     accept (the pin then names the new binary), and a process that
//     exec'd away and back to its original binary between two checks.
//   - The socket's directory must be writable only by the agent's user
//     (or root), so nobody else can replace the socket; the socket itself is
//     open to every local user, since attestation, not file modes, decides
//     identities.
//   - Only Linux is supported; on other systems Get fails with ErrUnsupported.
package peercred
