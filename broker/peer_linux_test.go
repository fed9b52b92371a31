package broker

import (
	"net"
	"os"
	"testing"
)

// A loopback TCP connection is attributed to the uid and process that
// opened its client end (sock_diag + /proc), for both address families.
func TestTCPCallerAttribution(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Logf("%s: %v (skipped)", addr, err)
			continue
		}
		defer l.Close()
		client, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		server, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer server.Close()
		c, err := tcpCaller(server.LocalAddr().(*net.TCPAddr), server.RemoteAddr().(*net.TCPAddr))
		if err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		if c.uid != uint32(os.Geteuid()) || c.pid != int32(os.Getpid()) || !c.gidKnown || c.gid != uint32(os.Getegid()) || !c.tcp {
			t.Errorf("%s: caller %+v, want uid %d pid %d gid %d", addr, c, os.Geteuid(), os.Getpid(), os.Getegid())
		}
		// A 4-tuple with no socket behind it is not attributed.
		fake := *server.RemoteAddr().(*net.TCPAddr)
		fake.Port = 1
		if _, err := tcpCaller(server.LocalAddr().(*net.TCPAddr), &fake); err == nil {
			t.Errorf("%s: a connection that does not exist was attributed", addr)
		}
	}
}
