package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/nodeward/nodeward/broker"
	"github.com/nodeward/nodeward/internal/systemd"
)

func runBroker(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlagSet("broker", stderr)
	cfgPath := fs.String("config", "", "broker config file (YAML)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *cfgPath == "" {
		return fmt.Errorf("%w: --config is required", errUsage)
	}
	cfg, err := broker.LoadConfig(*cfgPath)
	if err != nil {
		return fmt.Errorf("%w: %w", errConfig, err)
	}
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	survivePipes(ctx, log)
	socks, err := systemd.Activated()
	if err != nil {
		return err
	}
	b, err := broker.New(cfg, log)
	if err != nil {
		return err
	}
	tp, flush, err := startTracing(ctx, "nodeward-broker", log)
	if err != nil {
		return err
	}
	defer flush()
	b.SetTracing(tp)
	bl, err := takeSocket(socks, systemd.BrokerSocket, cfg.Listen, log)
	if err != nil {
		return err
	}
	warnLeftover(socks, log)
	// SIGUSR1 reopens a file audit_log after log rotation.
	reopenAuditOnUSR1(ctx, log, b.ReopenAudit)
	notifyLifecycle(ctx, systemd.NewNotifier(log), func() bool { return true },
		func() string { return b.Summary() }, b.Serving())
	return b.Serve(ctx, bl)
}

// runToken asks the broker for an access token and prints it.
func runToken(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("token", stderr)
	sock := fs.String("socket", broker.DefaultBrokerSocket, "the broker's Unix socket")
	tcp := fs.String("tcp", "", "the broker's loopback TCP address instead of the socket")
	upstream := fs.String("upstream", "", "upstream name from the broker config")
	aud := fs.String("audience", "", "audience of the access token")
	var scopes stringList
	fs.Var(&scopes, "scope", "scope (repeatable; default: the upstream's scopes)")
	asJSON := fs.Bool("json", false, "print the whole JSON answer")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *upstream == "" {
		return fmt.Errorf("%w: --upstream is required", errUsage)
	}
	q := url.Values{"upstream": {*upstream}}
	if *aud != "" {
		q.Set("audience", *aud)
	}
	for _, s := range scopes {
		q.Add("scope", s)
	}
	client := &http.Client{Timeout: 30 * time.Second}
	base := "http://" + *tcp
	if *tcp == "" {
		base = "http://broker"
		client.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", *sock)
		}}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/token?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	req.Header.Set(broker.RequestHeader, "true")
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error       string `json:"error"`
			Description string `json:"error_description"`
		}
		_ = json.Unmarshal(body, &e)
		if ra := resp.Header.Get("Retry-After"); ra != "" {
			return fmt.Errorf("HTTP %d %s: %s (retry after %ss)", resp.StatusCode, e.Error, e.Description, ra)
		}
		return fmt.Errorf("HTTP %d %s: %s", resp.StatusCode, e.Error, e.Description)
	}
	if *asJSON {
		_, err := stdout.Write(body)
		return err
	}
	var t struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(body, &t); err != nil {
		return fmt.Errorf("broker answer: %w", err)
	}
	fmt.Fprintln(stdout, t.AccessToken)
	return nil
}
