package agent

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// rawClient talks to the agent with the generated gRPC client, so tests can
// leave out the security header that go-spiffe always sends.
func rawClient(t *testing.T, r *running) workload.SpiffeWorkloadAPIClient {
	t.Helper()
	cc, err := grpc.NewClient(r.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return workload.NewSpiffeWorkloadAPIClient(cc)
}

func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
}

func TestSecurityHeaderRequired(t *testing.T) {
	r := startAgent(t, testConfig(t, "entries:\n"+selfEntry("web", "")))
	c := rawClient(t, r)
	ctx := ctxT(t)
	_, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"a"}})
	wantCode(t, "FetchJWTSVID without header", err, codes.InvalidArgument)
	_, err = c.ValidateJWTSVID(metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "false"), &workload.ValidateJWTSVIDRequest{Audience: "a", Svid: "x"})
	wantCode(t, "ValidateJWTSVID with header=false", err, codes.InvalidArgument)
	s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err == nil {
		_, err = s.Recv()
	}
	wantCode(t, "FetchX509SVID without header", err, codes.InvalidArgument)

	// With the header: the JWT bundle is a JWKS whose keys carry use=jwt-svid and a kid.
	js, err := c.FetchJWTBundles(withHeader(ctx), &workload.JWTBundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := js.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var jwks struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(resp.Bundles["spiffe://example.org"], &jwks); err != nil {
		t.Fatalf("JWKS: %v (%v)", err, resp.Bundles)
	}
	if len(jwks.Keys) != 1 || jwks.Keys[0]["use"] != "jwt-svid" || jwks.Keys[0]["kid"] == "" {
		t.Fatalf("JWKS keys = %v", jwks.Keys)
	}
	// A missing audience is InvalidArgument.
	_, err = c.FetchJWTSVID(withHeader(ctx), &workload.JWTSVIDRequest{})
	wantCode(t, "FetchJWTSVID without audience", err, codes.InvalidArgument)
	// WIT-SVIDs are not supported yet.
	ws, err := c.FetchWITSVID(withHeader(ctx), &workload.WITSVIDRequest{})
	if err == nil {
		_, err = ws.Recv()
	}
	wantCode(t, "FetchWITSVID", err, codes.Unimplemented)
	// The first stream message comes at once and holds the full state.
	xs, err := c.FetchX509SVID(withHeader(ctx), &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	x, err := xs.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(x.Svids) != 1 || len(x.Svids[0].X509Svid) == 0 || len(x.Svids[0].X509SvidKey) == 0 || len(x.Svids[0].Bundle) == 0 {
		t.Fatalf("first message incomplete: %d svids", len(x.Svids))
	}
}
