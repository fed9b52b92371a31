package broker

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// inetDiagSockID is struct inet_diag_sockid (linux/inet_diag.h).
type inetDiagSockID struct {
	SPort  [2]byte // big endian
	DPort  [2]byte
	Src    [16]byte
	Dst    [16]byte
	If     uint32
	Cookie [2]uint32
}

// inetDiagReqV2 is struct inet_diag_req_v2.
type inetDiagReqV2 struct {
	Family   uint8
	Protocol uint8
	Ext      uint8
	Pad      uint8
	States   uint32
	ID       inetDiagSockID
}

// inetDiagMsg is struct inet_diag_msg.
type inetDiagMsg struct {
	Family  uint8
	State   uint8
	Timer   uint8
	Retrans uint8
	ID      inetDiagSockID
	Expires uint32
	RQueue  uint32
	WQueue  uint32
	UID     uint32
	Inode   uint32
}

// errNotAttributed: the TCP peer's socket could not be found or owned.
var errNotAttributed = errors.New("loopback TCP peer cannot be attributed to a local user")

// tcpCaller finds the local socket at the other end of a loopback TCP
// connection (its source is remote, its destination local) with a
// NETLINK_SOCK_DIAG exact lookup, which gives the uid that created it and
// its inode; the process holding that inode (when it can be found in /proc)
// gives the pid and groups.
func tcpCaller(local, remote *net.TCPAddr) (*caller, error) {
	uid, inode, err := sockDiag(local, remote)
	if err != nil {
		return nil, err
	}
	c := &caller{uid: uid, tcp: true}
	if inode != 0 {
		if pid := pidOfSocket(uid, inode); pid > 0 {
			c.pid = int32(pid)
			c.gid, c.gidKnown, c.groups, c.groupsKnown = procGroups(pid, uid)
		}
	}
	return c, nil
}

func sockDiag(local, remote *net.TCPAddr) (uid, inode uint32, _ error) {
	req := inetDiagReqV2{Protocol: unix.IPPROTO_TCP, States: ^uint32(0)}
	req.ID.Cookie = [2]uint32{^uint32(0), ^uint32(0)} // INET_DIAG_NOCOOKIE
	binary.BigEndian.PutUint16(req.ID.SPort[:], uint16(remote.Port))
	binary.BigEndian.PutUint16(req.ID.DPort[:], uint16(local.Port))
	if r4, l4 := remote.IP.To4(), local.IP.To4(); r4 != nil && l4 != nil {
		req.Family = unix.AF_INET
		copy(req.ID.Src[:], r4)
		copy(req.ID.Dst[:], l4)
	} else {
		req.Family = unix.AF_INET6
		copy(req.ID.Src[:], remote.IP.To16())
		copy(req.ID.Dst[:], local.IP.To16())
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return 0, 0, fmt.Errorf("sock_diag: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.Timeval{Sec: 1}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	const hdr = unix.SizeofNlMsghdr
	msg := make([]byte, hdr+int(unsafe.Sizeof(req)))
	nh := (*unix.NlMsghdr)(unsafe.Pointer(&msg[0]))
	nh.Len = uint32(len(msg))
	nh.Type = unix.SOCK_DIAG_BY_FAMILY
	nh.Flags = unix.NLM_F_REQUEST
	nh.Seq = 1
	*(*inetDiagReqV2)(unsafe.Pointer(&msg[hdr])) = req
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, 0, fmt.Errorf("sock_diag: send: %w", err)
	}
	buf := make([]byte, 8192)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("sock_diag: receive: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil {
		return 0, 0, fmt.Errorf("sock_diag: %w", err)
	}
	for _, m := range msgs {
		switch m.Header.Type {
		case unix.NLMSG_ERROR:
			if len(m.Data) >= 4 {
				if errno := -int32(binary.NativeEndian.Uint32(m.Data[:4])); errno != 0 {
					return 0, 0, fmt.Errorf("sock_diag: %w: %w", errNotAttributed, syscall.Errno(errno))
				}
			}
		case unix.SOCK_DIAG_BY_FAMILY:
			if len(m.Data) < int(unsafe.Sizeof(inetDiagMsg{})) {
				continue
			}
			var d inetDiagMsg
			d = *(*inetDiagMsg)(unsafe.Pointer(&m.Data[0]))
			if binary.BigEndian.Uint16(d.ID.SPort[:]) != uint16(remote.Port) || binary.BigEndian.Uint16(d.ID.DPort[:]) != uint16(local.Port) {
				continue
			}
			return d.UID, d.Inode, nil
		}
	}
	return 0, 0, errNotAttributed
}

// pidOfSocket finds a process of uid holding the socket inode (0: none
// found, for example when it has exited or the broker may not look).
func pidOfSocket(uid, inode uint32) int {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	want := "socket:[" + strconv.FormatUint(uint64(inode), 10) + "]"
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat("/proc/"+p.Name(), &st) != nil || st.Uid != uid {
			continue
		}
		dir := "/proc/" + p.Name() + "/fd/"
		fds, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if l, err := os.Readlink(dir + fd.Name()); err == nil && l == want {
				return pid
			}
		}
	}
	return 0
}

// procGroups reads the effective gid and supplementary groups of pid from
// /proc/PID/status, if its uid is still uid.
func procGroups(pid int, uid uint32) (gid uint32, gidKnown bool, groups []uint32, groupsKnown bool) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, false, nil, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	uidOK := false
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		fields := strings.Fields(v)
		switch k {
		case "Uid":
			uidOK = len(fields) >= 2 && fields[1] == strconv.FormatUint(uint64(uid), 10)
		case "Gid":
			if len(fields) >= 2 {
				if g, err := strconv.ParseUint(fields[1], 10, 32); err == nil {
					gid, gidKnown = uint32(g), true
				}
			}
		case "Groups":
			groupsKnown = true
			for _, s := range fields {
				if g, err := strconv.ParseUint(s, 10, 32); err == nil {
					groups = append(groups, uint32(g))
				}
			}
		}
	}
	if !uidOK {
		return 0, false, nil, false
	}
	return gid, gidKnown, groups, groupsKnown
}
