package spire

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// TestBuildAgent builds (or finds) the cached spire-agent; `make
// spire-server` runs it with TestBuild so that `make test` does not pay the
// build.
func TestBuildAgent(t *testing.T) {
	if bin := AgentBinary(t); bin == "" {
		t.Fatal("no binary")
	}
}

// TestAgentSmoke: a real spire-agent attests to a real server with a join
// token and serves an entry parented to its agent ID to this process
// (unix:uid, and unix:path with DiscoverWorkloadPath) over its Workload API.
func TestAgentSmoke(t *testing.T) {
	s := Start(t, Options{TrustDomain: "agent-smoke.test"})
	a := StartAgent(t, s, AgentOptions{DiscoverWorkloadPath: true})
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	want := s.ID("/workload")
	s.EntryCreate(Entry{ParentID: a.ID, SPIFFEID: want, Selectors: []string{"unix:uid:" + strconv.Itoa(os.Geteuid()), "unix:path:" + exe}})
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		sv, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+a.SocketPath))
		cancel()
		if err == nil && sv.ID.String() == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("spire-agent did not serve %s within 30s: %v (svid %v)", want, err, sv)
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
	a.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+a.SocketPath)); err == nil {
		t.Fatal("a stopped spire-agent still serves")
	}
}
