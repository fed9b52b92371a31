package main

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/nodeward/nodeward/internal/atomicfile"
)

const fetchTimeout = 10 * time.Second

func runFetch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: fetch x509|jwt|bundles", errUsage)
	}
	switch args[0] {
	case "x509":
		return fetchX509(ctx, args[1:], stdout, stderr)
	case "jwt":
		return fetchJWT(ctx, args[1:], stdout, stderr)
	case "bundles":
		return fetchBundles(ctx, args[1:], stdout, stderr)
	}
	return fmt.Errorf("%w: unknown fetch kind %q (want x509, jwt or bundles)", errUsage, args[0])
}

func fetchX509(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("fetch x509", stderr)
	sock := socketFlag(fs)
	out := fs.String("out", "", "write svid.pem, svid_key.pem (0600) and bundle.pem into this directory")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	xc, err := workloadapi.FetchX509Context(ctx, clientOption(*sock))
	if err != nil {
		return fmt.Errorf("fetch X.509-SVID: %w", err)
	}
	if len(xc.SVIDs) == 0 {
		return errors.New("fetch X.509-SVID: the agent returned no SVID")
	}
	for i, svid := range xc.SVIDs {
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		printSVID(stdout, svid)
	}
	if *out == "" {
		return nil
	}
	svid := xc.SVIDs[0]
	certs, key, err := svid.Marshal()
	if err != nil {
		return fmt.Errorf("encode SVID: %w", err)
	}
	var bundle []byte
	if b, err := xc.Bundles.GetX509BundleForTrustDomain(svid.ID.TrustDomain()); err == nil {
		if bundle, err = b.Marshal(); err != nil {
			return fmt.Errorf("encode bundle: %w", err)
		}
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	// Key first, so a reader that sees the new certificate never pairs it with an old key for long.
	for _, f := range []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{"svid_key.pem", key, 0o600},
		{"svid.pem", certs, 0o644},
		{"bundle.pem", bundle, 0o644},
	} {
		if err := atomicfile.Write(filepath.Join(*out, f.name), f.data, f.perm); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "\nwrote svid.pem, svid_key.pem and bundle.pem to %s\n", *out)
	return nil
}

func printSVID(w io.Writer, svid *x509svid.SVID) {
	leaf := svid.Certificates[0]
	fmt.Fprintf(w, "SPIFFE ID:        %s\n", svid.ID)
	if svid.Hint != "" {
		fmt.Fprintf(w, "Hint:             %s\n", svid.Hint)
	}
	fmt.Fprintf(w, "SVID valid after: %s\n", leaf.NotBefore.UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "SVID valid until: %s (in %s)\n", leaf.NotAfter.UTC().Format(time.RFC3339),
		time.Until(leaf.NotAfter).Round(time.Second))
	if len(leaf.DNSNames) > 0 {
		fmt.Fprintf(w, "DNS names:        %s\n", strings.Join(leaf.DNSNames, ", "))
	}
	fmt.Fprintf(w, "Serial:           %s\n", leaf.SerialNumber.Text(16))
	fmt.Fprintln(w, "Chain:")
	for i, c := range svid.Certificates {
		fmt.Fprintf(w, "  [%d] subject=%q issuer=%q until %s\n", i, c.Subject.String(), c.Issuer.String(),
			c.NotAfter.UTC().Format(time.RFC3339))
	}
}

func fetchJWT(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("fetch jwt", stderr)
	sock := socketFlag(fs)
	var auds stringList
	fs.Var(&auds, "audience", "audience of the JWT-SVID (repeatable)")
	id := fs.String("spiffe-id", "", "ask for this SPIFFE ID only")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if len(auds) == 0 {
		return fmt.Errorf("%w: --audience is required", errUsage)
	}
	params := jwtsvid.Params{Audience: auds[0], ExtraAudiences: auds[1:]}
	if *id != "" {
		sid, err := spiffeid.FromString(*id)
		if err != nil {
			return fmt.Errorf("%w: --spiffe-id: %v", errUsage, err)
		}
		params.Subject = sid
	}
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	c, err := workloadapi.New(ctx, clientOption(*sock))
	if err != nil {
		return fmt.Errorf("connect to agent: %w", err)
	}
	defer c.Close()
	svids, err := c.FetchJWTSVIDs(ctx, params)
	if err != nil {
		return fmt.Errorf("fetch JWT-SVID: %w", err)
	}
	for _, s := range svids {
		fmt.Fprintf(stdout, "token(%s):\n\t%s\n", s.ID, s.Marshal())
	}
	return nil
}

func fetchBundles(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("fetch bundles", stderr)
	sock := socketFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	c, err := workloadapi.New(ctx, clientOption(*sock))
	if err != nil {
		return fmt.Errorf("connect to agent: %w", err)
	}
	defer c.Close()
	xb, err := c.FetchX509Bundles(ctx)
	if err != nil {
		return fmt.Errorf("fetch X.509 bundles: %w", err)
	}
	for _, b := range xb.Bundles() {
		fmt.Fprintf(stdout, "X.509 bundle for %s:\n", b.TrustDomain().IDString())
		for _, c := range b.X509Authorities() {
			_ = pem.Encode(stdout, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		}
	}
	jb, err := c.FetchJWTBundles(ctx)
	if err != nil {
		return fmt.Errorf("fetch JWT bundles: %w", err)
	}
	for _, b := range jb.Bundles() {
		doc, err := b.Marshal()
		if err != nil {
			return fmt.Errorf("encode JWT bundle: %w", err)
		}
		fmt.Fprintf(stdout, "JWT bundle for %s:\n%s\n", b.TrustDomain().IDString(), doc)
	}
	return nil
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }

// Set appends v.
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }
