package main

import (
	"flag"
	"os"
	"strings"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/nodeward/nodeward/agent/config"
)

// systemSocket is where a system agent (running as root) listens by default.
const systemSocket = "/run/nodeward/workload.sock"

// socketFlag registers --socket on fs.
func socketFlag(fs *flag.FlagSet) *string {
	return fs.String("socket", "", "agent socket (unix:///path or /path); default $SPIFFE_ENDPOINT_SOCKET, then the default socket path")
}

// resolveSocket returns the Workload API address, as go-spiffe wants it:
// --socket, else SPIFFE_ENDPOINT_SOCKET, else the default socket path for
// this user if it exists, else the system socket.
func resolveSocket(flagVal string) string {
	addr := flagVal
	if addr == "" {
		addr = os.Getenv("SPIFFE_ENDPOINT_SOCKET")
	}
	if addr == "" {
		addr = systemSocket
		if p := config.DefaultSocketPath(); p != systemSocket {
			if _, err := os.Stat(p); err == nil {
				addr = p
			}
		}
	}
	if strings.HasPrefix(addr, "/") {
		addr = "unix://" + addr
	}
	return addr
}

func clientOption(flagVal string) workloadapi.ClientOption {
	return workloadapi.WithAddr(resolveSocket(flagVal))
}
