package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/nodeward/nodeward/agent"
	"github.com/nodeward/nodeward/agent/config"
)

func runAgent(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlagSet("agent", stderr)
	cfgPath := fs.String("config", "", "agent config file (YAML); none: embedded default, deny-all")
	logLevel := fs.String("log-level", "", "override log_level (debug, info, warn, error)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
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
	if cfg.MaxProcs > 0 {
		runtime.GOMAXPROCS(cfg.MaxProcs)
	}

	a, err := agent.New(cfg, log)
	if err != nil {
		return err
	}
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
				nc, err := loadConfig(*cfgPath)
				if err == nil {
					err = a.Reload(nc)
				}
				if err != nil {
					log.Error("reload failed; keeping the running config", "err", err)
				}
			}
		}
	}()
	return a.Run(ctx)
}

func loadConfig(path string) (*config.Agent, error) {
	if path == "" {
		return config.Default(), nil
	}
	return config.Load(path)
}
