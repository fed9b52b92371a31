package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/nodeward/nodeward/agent/config"
	"github.com/nodeward/nodeward/attestors/tpm"
)

// runNode is `nodeward node attest|verify|devid`: the node-attestation
// protocol of attestors/tpm on the command line, and DevID provisioning.
func runNode(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: node attest|verify|devid", errUsage)
	}
	switch args[0] {
	case "attest":
		return nodeAttest(ctx, args[1:], stdout, stderr)
	case "verify":
		return nodeVerify(ctx, args[1:], stdout, stderr)
	case "devid":
		return nodeDevID(ctx, args[1:], stdout, stderr)
	}
	return fmt.Errorf("%w: node attest|verify|devid, not %q", errUsage, args[0])
}

// tpmFlags are the flags both subcommands use to find the TPM.
type tpmFlags struct {
	addr, cfg, pcrs *string
}

func addTPMFlags(fs interface {
	String(name, value, usage string) *string
}) tpmFlags {
	return tpmFlags{
		addr: fs.String("tpm", "", "TPM: a device (/dev/tpmrm0), tcp://host:port or unix:///path (default: the agent config's tpm section, else /dev/tpmrm0)"),
		cfg:  fs.String("config", "", "agent config whose tpm section names the TPM and PCRs"),
		pcrs: fs.String("pcrs", "", "comma-separated sha256 PCR indexes to quote (default: the config's tpm.pcrs, else 7)"),
	}
}

// resolve returns the TPM address and PCRs from the flags and config.
func (f tpmFlags) resolve() (string, []int, error) {
	addr, pcrs := "/dev/tpmrm0", []int{7}
	if *f.cfg != "" {
		c, err := config.Load(*f.cfg)
		if err != nil {
			return "", nil, fmt.Errorf("%w: %v", errUnreadable, err)
		}
		if c.TPM != nil {
			addr = c.TPM.Addr()
			if len(c.TPM.PCRs) > 0 {
				pcrs = c.TPM.PCRs
			}
		}
	}
	if *f.addr != "" {
		addr = *f.addr
	}
	if *f.pcrs != "" {
		pcrs = nil
		for _, p := range strings.Split(*f.pcrs, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(p))
			if err != nil || n < 0 || n > 23 {
				return "", nil, fmt.Errorf("%w: --pcrs: %q is not a PCR index 0-23", errUsage, p)
			}
			pcrs = append(pcrs, n)
		}
	}
	return addr, pcrs, nil
}

func nonceFlag(s string) ([]byte, error) {
	n, err := hex.DecodeString(s)
	if err != nil || len(n) < 8 || len(n) > 64 {
		return nil, fmt.Errorf("%w: --nonce: want 8 to 64 bytes in hex (a verifier's fresh random value)", errUsage)
	}
	return n, nil
}

func nodeAttest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("node attest", stderr)
	nonceHex := fs.String("nonce", "", "the verifier's nonce, hex (required)")
	tf := addTPMFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	nonce, err := nonceFlag(*nonceHex)
	if err != nil {
		return err
	}
	addr, pcrs, err := tf.resolve()
	if err != nil {
		return err
	}
	tp, err := tpm.Open(ctx, addr)
	if err != nil {
		return err
	}
	defer tp.Close()
	ev, err := tp.Attest(ctx, nonce, pcrs)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(ev)
}

// verifyResult is what `node verify` prints.
type verifyResult struct {
	Verified   bool              `json:"verified"`
	EKHash     string            `json:"ek_hash"`
	EKCA       string            `json:"ek_ca"`
	PCRs       map[string]string `json:"pcrs"`
	Activation string            `json:"credential_activation"`
	Selectors  []string          `json:"selectors"`
}

func nodeVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("node verify", stderr)
	nonceHex := fs.String("nonce", "", "the nonce the evidence must answer, hex (required)")
	rootsPath := fs.String("roots", "", "PEM file of the TPM manufacturers' root (and intermediate) certificates (required)")
	skip := fs.Bool("skip-activation", false, "do not run credential activation (the AK is then NOT bound to the EK)")
	tf := addTPMFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: node verify --nonce HEX --roots FILE EVIDENCE", errUsage)
	}
	nonce, err := nonceFlag(*nonceHex)
	if err != nil {
		return err
	}
	if *rootsPath == "" {
		return fmt.Errorf("%w: --roots is required", errUsage)
	}
	roots, inter, err := tpm.LoadRoots(*rootsPath)
	if err != nil {
		return fmt.Errorf("%w: %v", errUnreadable, err)
	}
	data, err := readEvidence(fs.Arg(0))
	if err != nil {
		return fmt.Errorf("%w: %v", errUnreadable, err)
	}
	var ev tpm.Evidence
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ev); err != nil {
		return fmt.Errorf("%w: evidence %s: %v", errUnreadable, fs.Arg(0), err)
	}
	res, err := tpm.Verify(&ev, nonce, roots, inter)
	if err != nil {
		return err
	}
	out := verifyResult{EKHash: res.EKHash, EKCA: res.EKCAHash, PCRs: map[string]string{}, Activation: "skipped: the AK is not bound to the EK"}
	out.Selectors = []string{"tpm:ek-hash:" + res.EKHash, "tpm:ek-ca:" + res.EKCAHash}
	var idx []int
	for i := range res.PCRs {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	for _, i := range idx {
		v := hex.EncodeToString(res.PCRs[i])
		out.PCRs[strconv.Itoa(i)] = v
		out.Selectors = append(out.Selectors, fmt.Sprintf("tpm:pcr:sha256:%d:%s", i, v))
	}
	if !*skip {
		// Credential activation: the challenge is made in software for the
		// evidence's EK and AK name; only the TPM that holds both answers it.
		addr, _, err := tf.resolve()
		if err != nil {
			return err
		}
		ch, secret, err := tpm.NewChallenge(&ev)
		if err != nil {
			return err
		}
		tp, err := tpm.Open(ctx, addr)
		if err != nil {
			return err
		}
		answer, err := tp.ActivateCredential(ctx, ch)
		_ = tp.Close()
		if err != nil {
			return err
		}
		if err := tpm.CheckActivation(secret, answer); err != nil {
			return err
		}
		out.Activation = "ok: the AK is bound to the EK"
	}
	out.Verified = true
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func readEvidence(path string) ([]byte, error) {
	if path == "-" {
		return io.ReadAll(io.LimitReader(os.Stdin, 1<<20))
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 1<<20))
}
