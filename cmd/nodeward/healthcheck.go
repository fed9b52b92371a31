package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// runHealthcheck asks the agent for bundles. Any answer from the agent, even
// PermissionDenied for a caller with no identity, proves it is up and
// attesting; only an unreachable or silent agent is unhealthy.
func runHealthcheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("healthcheck", stderr)
	sock := socketFlag(fs)
	timeout := fs.Duration("timeout", 3*time.Second, "give up after this long")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	c, err := workloadapi.New(ctx, clientOption(*sock))
	if err != nil {
		return fmt.Errorf("agent is unhealthy: %w", err)
	}
	defer c.Close()
	_, err = c.FetchX509Bundles(ctx)
	if err == nil || status.Code(err) == codes.PermissionDenied {
		fmt.Fprintln(stdout, "agent is healthy")
		return nil
	}
	return fmt.Errorf("agent is unhealthy: %w", err)
}
