package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func runValidate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("validate", stderr)
	sock := socketFlag(fs)
	aud := fs.String("audience", "", "audience the token must carry")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *aud == "" || fs.NArg() != 1 {
		return fmt.Errorf("%w: validate --audience A TOKEN", errUsage)
	}
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	c, err := workloadapi.New(ctx, clientOption(*sock))
	if err != nil {
		return fmt.Errorf("connect to agent: %w", err)
	}
	defer c.Close()
	svid, err := c.ValidateJWTSVID(ctx, fs.Arg(0), *aud)
	if err != nil {
		// The error comes from the agent; it never echoes the token.
		return fmt.Errorf("token is not valid: %w", err)
	}
	claims, err := json.MarshalIndent(svid.Claims, "", "  ")
	if err != nil {
		return fmt.Errorf("encode claims: %w", err)
	}
	fmt.Fprintf(stdout, "SVID is valid.\nSPIFFE ID: %s\nClaims: %s\n", svid.ID, claims)
	return nil
}
