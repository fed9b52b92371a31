package peercred

import (
	"context"
	"errors"
	"fmt"
	"net"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// AuthType is the gRPC AuthType of AuthInfo.
const AuthType = "nodeward-peercred"

// AuthInfo carries a connection's peer credentials through gRPC.
type AuthInfo struct {
	credentials.CommonAuthInfo
	Info *Info
}

// AuthType implements credentials.AuthInfo.
func (AuthInfo) AuthType() string { return AuthType }

// FromContext returns the peer credentials of the gRPC call in ctx.
func FromContext(ctx context.Context) (*Info, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, false
	}
	ai, ok := p.AuthInfo.(AuthInfo)
	if !ok || ai.Info == nil {
		return nil, false
	}
	return ai.Info, true
}

// TransportCredentials returns gRPC server credentials that attach each Unix
// connection's peer credentials (pinned by a pidfd) to its calls.
func TransportCredentials() credentials.TransportCredentials { return creds{} }

type creds struct{}

// ClientHandshake is not supported: these are server credentials.
func (creds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("peercred: client handshake not supported")
}

// ServerHandshake reads the peer credentials of a Unix connection. On error
// gRPC closes the raw connection; on success the returned conn closes the
// pidfd together with the socket.
//
// A wrapper of a Unix connection (such as a connection-limiting listener's)
// is accepted when it has a UnixConn() *net.UnixConn method; closing the
// returned conn then closes the wrapper.
func (creds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := c.(*net.UnixConn)
	if w, isWrapper := c.(interface{ UnixConn() *net.UnixConn }); isWrapper {
		uc = w.UnixConn()
		ok = uc != nil
	}
	if !ok {
		return nil, nil, fmt.Errorf("peercred: %T is not a Unix socket connection", c)
	}
	info, err := Get(uc)
	if err != nil {
		return nil, nil, fmt.Errorf("peercred handshake: %w", err)
	}
	return &conn{UnixConn: uc, raw: c, info: info}, AuthInfo{
		// A local socket: nobody but the kernel sits between the peers.
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		Info:           info,
	}, nil
}

// Info names the protocol.
func (creds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: AuthType}
}

// Clone returns the (stateless) credentials themselves.
func (c creds) Clone() credentials.TransportCredentials { return c }

// OverrideServerName is a no-op: there is no server name to check.
func (creds) OverrideServerName(string) error { return nil }

// conn closes the pidfd together with the connection.
type conn struct {
	*net.UnixConn
	raw  net.Conn // the conn handed to ServerHandshake (uc or its wrapper)
	info *Info
}

// Read reads through the wrapper, if any (it may pace reads).
func (c *conn) Read(p []byte) (int, error) { return c.raw.Read(p) }

// Close closes the socket (through its wrapper, if any) and the pidfd.
func (c *conn) Close() error {
	return errors.Join(c.raw.Close(), c.info.Close())
}
