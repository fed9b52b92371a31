package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/nodeward/nodeward/agent"
	"github.com/nodeward/nodeward/agent/config"
	"github.com/nodeward/nodeward/broker"
	"github.com/nodeward/nodeward/internal/systemd"
)

func runAgent(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlagSet("agent", stderr)
	cfgPath := fs.String("config", "", "agent config file (YAML); none: embedded default, deny-all")
	logLevel := fs.String("log-level", "", "override log_level (debug, info, warn, error)")
	joinToken := fs.String("join-token", "", "SPIRE join token: overrides server.node_attestation (fleet mode; visible to other local users in ps, prefer the config file)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return fmt.Errorf("%w: %w", errConfig, err)
	}
	if err := overrideJoinToken(cfg, *joinToken); err != nil {
		return err
	}
	if *logLevel != "" {
		cfg.LogLevel = *logLevel
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return fmt.Errorf("%w: log level %q", errUsage, cfg.LogLevel)
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	survivePipes(ctx, log)
	if cfg.MaxProcs > 0 {
		runtime.GOMAXPROCS(cfg.MaxProcs)
	}
	agent.RaiseFileLimit(log)

	socks, err := systemd.Activated()
	if err != nil {
		return err
	}
	notify := systemd.NewNotifier(log)
	tp, flush, err := startTracing(ctx, "nodeward-agent", log)
	if err != nil {
		return err
	}
	defer flush()
	a, err := agent.New(cfg, log, agent.WithContext(ctx), agent.WithTracer(tp.Tracer("github.com/nodeward/nodeward/workloadapi")))
	if err != nil {
		return err
	}
	wl, err := takeSocket(socks, systemd.WorkloadSocket, cfg.SocketPath, log)
	if err != nil {
		return err
	}
	// The broker may run inside the agent: same process, its own socket;
	// it talks to the agent over the Workload API like any client, so the
	// agent's own binary and uid need a registration entry.
	var b *broker.Broker
	if cfg.Broker != nil {
		if b, err = embeddedBroker(cfg, log); err != nil {
			return fmt.Errorf("%w: %w", errConfig, err)
		}
	}
	// SIGUSR1 reopens the file audit sinks (the agent's, the embedded
	// broker's) after log rotation.
	reopen := []func() error{a.ReopenAudit}
	if b != nil {
		reopen = append(reopen, b.ReopenAudit)
	}
	reopenAuditOnUSR1(ctx, log, reopen...)
	// SIGHUP reloads the config: a bad new config is logged and the old one keeps serving.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				notify.Reloading()
				if nc, err := loadConfig(*cfgPath); err != nil {
					a.ReloadFailed(err)
				} else if err := overrideJoinToken(nc, *joinToken); err != nil {
					a.ReloadFailed(err)
				} else {
					_ = a.Reload(nc) // a failure is recorded by Reload
				}
				notify.Ready(a.Summary())
			}
		}
	}()
	serveAgent := func(ctx context.Context) error {
		if wl != nil {
			return a.Serve(ctx, wl)
		}
		return a.Run(ctx)
	}
	if b == nil {
		warnLeftover(socks, log)
		notifyLifecycle(ctx, notify, a.Ready, a.Summary, a.Serving())
		return serveAgent(ctx)
	}
	b.SetTracing(tp)
	a.AttachStatus(func() any { return b.Status() })
	b.OnToken(a.RecordBrokerToken)
	bl, err := takeSocket(socks, systemd.BrokerSocket, "", log)
	if err != nil {
		return err
	}
	warnLeftover(socks, log)
	notifyLifecycle(ctx, notify, a.Ready, a.Summary, a.Serving(), b.Serving())
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return serveAgent(gctx) })
	g.Go(func() error { return b.Serve(gctx, bl) })
	return g.Wait()
}

func embeddedBroker(cfg *config.Agent, log *slog.Logger) (*broker.Broker, error) {
	bcfg, err := broker.ParseConfig(cfg.Source, cfg.Broker)
	if err != nil {
		return nil, fmt.Errorf("broker section: %w", err)
	}
	if !bytes.Contains(cfg.Broker, []byte("workload_socket:")) {
		bcfg.WorkloadSocket = "unix://" + cfg.SocketPath
	}
	if bcfg.Environment == "" {
		bcfg.Environment = cfg.Environment // the node's environment, unless the section names its own
	}
	return broker.New(bcfg, log.With("component", "broker"))
}

func loadConfig(path string) (*config.Agent, error) {
	if path == "" {
		return config.Default(), nil
	}
	return config.Load(path)
}

// overrideJoinToken applies `--join-token`: the node attests with that
// token instead of the configured attestor. It needs a server section.
func overrideJoinToken(cfg *config.Agent, token string) error {
	if token == "" {
		return nil
	}
	if cfg.Server == nil {
		return fmt.Errorf("%w: --join-token needs a server section in the config (fleet mode)", errConfig)
	}
	if strings.ContainsAny(token, " \t\r\n") || len(token) > 256 {
		return fmt.Errorf("%w: --join-token: want the token as one word (value not shown)", errUsage)
	}
	cfg.Server.NodeAttestation = config.NodeAttestation{JoinToken: token}
	return nil
}

// reopenAuditOnUSR1 calls each reopen function on every SIGUSR1 (after log
// rotation) until ctx is done; a failure is logged, the old file kept.
func reopenAuditOnUSR1(ctx context.Context, log *slog.Logger, reopen ...func() error) {
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		defer signal.Stop(usr1)
		for {
			select {
			case <-ctx.Done():
				return
			case <-usr1:
				for _, f := range reopen {
					if err := f(); err != nil {
						log.Error("reopen audit log", "err", err)
					}
				}
			}
		}
	}()
}
