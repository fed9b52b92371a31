package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/nodeward/nodeward/test/spire"
	"github.com/nodeward/nodeward/test/testutil"
)

// fleetSetup is one real spire-server with two nodes on it: nodeward in
// fleet mode and a real spire-agent, each granting this benchmark binary
// (uid and path) an identity, plus a standalone nodeward for comparison.
type fleetSetup struct {
	srv       *spire.Server
	fleet     *testutil.Agent
	fleetID   string
	sa        *spire.Agent
	selectors []string
}

func startFleet(b *testing.B, sync time.Duration) *fleetSetup {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	f := &fleetSetup{selectors: []string{fmt.Sprintf("unix:uid:%d", os.Geteuid()), "unix:path:" + exe}}
	f.srv = spire.Start(b, spire.Options{TrustDomain: "bench.test"})
	dir := testutil.SocketDir(b)
	bundle := filepath.Join(dir, "spire-bundle.pem")
	if err := os.WriteFile(bundle, f.srv.BundlePEM(), 0o644); err != nil {
		b.Fatal(err)
	}
	f.fleetID = f.srv.ID("/node/nodeward")
	extra := fmt.Sprintf("%sserver:\n  address: %s\n  trust_bundle: %s\n  sync_interval: %s\n  node_attestation:\n    join_token: %s\n",
		unthrottled, f.srv.Addr, bundle, sync, f.srv.TokenGenerate(f.fleetID))
	cfg, sock := testutil.WriteConfig(b, dir, f.srv.TrustDomain, extra)
	f.fleet = testutil.StartAgent(b, bin, cfg, sock)
	testutil.WaitServing(b, sock, 30*time.Second)
	f.sa = spire.StartAgent(b, f.srv, spire.AgentOptions{SyncInterval: sync, DiscoverWorkloadPath: true})
	for _, parent := range []string{f.fleetID, f.sa.ID} {
		f.srv.EntryCreate(spire.Entry{ParentID: parent, SPIFFEID: f.srv.ID("/bench"), Selectors: f.selectors})
	}
	for _, s := range []string{f.fleet.Socket, f.sa.SocketPath} {
		waitServed(b, s, f.srv.ID("/bench"), true, 60*time.Second)
	}
	return f
}

// waitServed polls socket until the SVID of id is served (or, with
// served false, no longer served) and returns how long that took.
func waitServed(b *testing.B, socket, id string, served bool, within time.Duration) time.Duration {
	b.Helper()
	t0 := time.Now()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		xc, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+socket))
		cancel()
		has := false
		if err == nil {
			for _, sv := range xc.SVIDs {
				has = has || sv.ID.String() == id
			}
		}
		if has == served {
			return time.Since(t0)
		}
		if time.Since(t0) > within {
			b.Fatalf("%s: %s served=%v not reached within %s: %v", socket, id, served, within, err)
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
}

// BenchmarkFleetWorkloadAPI compares, in one run on one machine, the
// Workload API of nodeward standalone, nodeward in fleet mode (SVIDs
// signed by a real spire-server) and the real spire-agent on the same
// server: p50/p99 per call, agent CPU per call and RSS.
//
//	go test -run '^$' -bench FleetWorkloadAPI -benchtime 5000x ./test/bench/
func BenchmarkFleetWorkloadAPI(b *testing.B) {
	f := startFleet(b, 5*time.Second)
	standalone := startAgent(b)
	agents := []struct {
		name   string
		socket string
		pid    int
	}{
		{"nodeward-standalone", standalone.Socket, standalone.Cmd.Process.Pid},
		{"nodeward-server", f.fleet.Socket, f.fleet.Cmd.Process.Pid},
		{"spire-agent", f.sa.SocketPath, f.sa.PID()},
	}
	for _, a := range agents {
		_, rss := procStat(b, a.pid)
		b.Run(a.name+"/idle-rss", func(b *testing.B) {
			for range b.N {
				b.ReportMetric(float64(rss)/1024, "rss-MiB")
			}
		})
	}
	for _, tc := range []struct {
		name string
		call rpc
	}{
		{"FetchX509SVID", fetchX509},
		{"FetchJWTSVID-cached", fetchJWT},
	} {
		for _, a := range agents {
			b.Run(fmt.Sprintf("%s/%s", tc.name, a.name), func(b *testing.B) {
				runCallsAt(b, a.socket, a.pid, 1, tc.call)
			})
		}
	}
}

// BenchmarkFleetEntryPropagation measures, for nodeward in fleet mode and
// the real spire-agent on the same server (cache reload 1 s), the time
// from `spire-server entry create` returning to the SVID being served on
// the node, and from `entry delete` to it being gone, at sync_interval 5s
// and 1s.
//
//	go test -run '^$' -bench FleetEntryPropagation -benchtime 3x ./test/bench/
func BenchmarkFleetEntryPropagation(b *testing.B) {
	for _, sync := range []time.Duration{5 * time.Second, time.Second} {
		b.Run("sync="+sync.String(), func(b *testing.B) {
			f := startFleet(b, sync)
			for _, node := range []struct {
				name, socket, parent string
			}{
				{"nodeward-server", f.fleet.Socket, f.fleetID},
				{"spire-agent", f.sa.SocketPath, f.sa.ID},
			} {
				b.Run(node.name, func(b *testing.B) {
					var created, deleted time.Duration
					for i := range b.N {
						id := f.srv.ID(fmt.Sprintf("/prop/%s/%d", node.name, i))
						eid := f.srv.EntryCreate(spire.Entry{ParentID: node.parent, SPIFFEID: id, Selectors: f.selectors})
						created += waitServed(b, node.socket, id, true, 60*time.Second)
						f.srv.EntryDelete(eid)
						deleted += waitServed(b, node.socket, id, false, 60*time.Second)
					}
					b.ReportMetric(created.Seconds()/float64(b.N), "s-create-to-served")
					b.ReportMetric(deleted.Seconds()/float64(b.N), "s-delete-to-gone")
				})
			}
		})
	}
}

// BenchmarkFleetStartToFirstSVID measures nodeward in fleet mode from exec
// to the first X.509-SVID a go-spiffe client receives: "cold" attests with
// a new join token and an empty data_dir (attestation, first sync, first
// BatchNewX509SVID), "restart" starts on the data_dir of a previous run
// (the stored agent SVID, no attestation).
//
//	go test -run '^$' -bench FleetStartToFirstSVID -benchtime 5x ./test/bench/
func BenchmarkFleetStartToFirstSVID(b *testing.B) {
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	sels := []string{fmt.Sprintf("unix:uid:%d", os.Geteuid()), "unix:path:" + exe}
	srv := spire.Start(b, spire.Options{TrustDomain: "start.test"})
	bundle := filepath.Join(b.TempDir(), "spire-bundle.pem")
	if err := os.WriteFile(bundle, srv.BundlePEM(), 0o644); err != nil {
		b.Fatal(err)
	}
	// Benchmarks run more than once (b.N = 1 first): every node is new.
	n := 0
	node := func() (cfg, sock, id string) {
		n++
		i := n
		dir := testutil.SocketDir(b)
		nodeID := srv.ID(fmt.Sprintf("/node/%d", i))
		id = srv.ID(fmt.Sprintf("/start/%d", i))
		srv.EntryCreate(spire.Entry{ParentID: nodeID, SPIFFEID: id, Selectors: sels})
		extra := fmt.Sprintf("server:\n  address: %s\n  trust_bundle: %s\n  sync_interval: 1s\n  node_attestation:\n    join_token: %s\n",
			srv.Addr, bundle, srv.TokenGenerate(nodeID))
		cfg, sock = testutil.WriteConfig(b, dir, srv.TrustDomain, extra)
		return cfg, sock, id
	}
	first := func(cfg, sock, id string) time.Duration {
		cmd := exec.Command(bin, "agent", "--config", cfg)
		t0 := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		defer func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() }()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			xc, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+sock))
			cancel()
			if err == nil {
				for _, sv := range xc.SVIDs {
					if sv.ID.String() == id {
						return time.Since(t0)
					}
				}
			}
			if time.Since(t0) > 60*time.Second {
				b.Fatalf("no SVID within 60s: %v", err)
			}
			time.Sleep(2 * time.Millisecond) // polling interval
		}
	}
	b.Run("cold", func(b *testing.B) {
		var total time.Duration
		for range b.N {
			total += first(node())
		}
		b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms-to-first-svid")
	})
	b.Run("restart", func(b *testing.B) {
		cfg, sock, id := node()
		first(cfg, sock, id) // attests once; later starts reuse the stored agent SVID
		var total time.Duration
		for range b.N {
			total += first(cfg, sock, id)
		}
		b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms-to-first-svid")
	})
}
