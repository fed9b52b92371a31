package agent

import (
	"context"
	"crypto"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodeward/nodeward/agent/config"
	"github.com/nodeward/nodeward/attestors/selector"
	"github.com/nodeward/nodeward/attestors/tpm"
)

// node holds the facts the agent knows about its node from the TPM: the
// EK hash and EK CA (fixed at start) and the PCR values of the latest quote
// the agent verified itself. They are added to every workload's selectors
// when entries are matched, so a PCR change takes effect for open streams
// too. The request path only loads an atomic pointer: it never waits on the
// TPM.
type node struct {
	tp       *tpm.TPM
	log      *slog.Logger
	akPub    crypto.PublicKey
	pcrs     []int
	interval time.Duration
	id       spiffeid.ID

	fixed []selector.Selector                 // tpm:ek-hash, tpm:ek-ca
	sels  atomic.Pointer[[]selector.Selector] // fixed + tpm:pcr…
	pcrv  atomic.Pointer[map[int]string]      // last verified PCR values (hex)
	last  atomic.Pointer[time.Time]           // last successful quote
	mu    sync.Mutex                          // one quote at a time
	poke  chan struct{}
}

// startNode reads the EK, verifies its chain when roots are configured,
// and takes the first quote. Any failure is a startup error: a configured
// TPM is never silently skipped.
func startNode(ctx context.Context, tp *tpm.TPM, cfg *config.TPM, td spiffeid.TrustDomain, log *slog.Logger) (*node, error) {
	ek, err := tp.EK(ctx)
	if err != nil {
		return nil, fmt.Errorf("tpm: %w", err)
	}
	n := &node{tp: tp, log: log, pcrs: slices.Clone(cfg.PCRs), interval: time.Duration(cfg.QuoteInterval), poke: make(chan struct{}, 1)}
	if n.interval <= 0 {
		n.interval = config.DefaultQuoteInterval
	}
	hash := ek.Hash()
	n.fixed = []selector.Selector{selector.New("tpm", "ek-hash", hash)}
	if cfg.EKRoots != "" {
		roots, inter, err := tpm.LoadRoots(cfg.EKRoots)
		if err != nil {
			return nil, fmt.Errorf("tpm.ek_roots: %w", err)
		}
		caHash, err := tpm.VerifyEKCert(ek.Cert, inter, roots)
		if err != nil {
			return nil, fmt.Errorf("tpm: EK certificate against %s: %w", cfg.EKRoots, err)
		}
		n.fixed = append(n.fixed, selector.New("tpm", "ek-ca", caHash))
	}
	if n.id, err = spiffeid.FromSegments(td, "nodeward", "agent", "tpm", hash); err != nil {
		return nil, fmt.Errorf("tpm: agent identity: %w", err)
	}
	if len(n.pcrs) > 0 {
		area, err := tp.AKPublic(ctx)
		if err != nil {
			return nil, fmt.Errorf("tpm: attestation key: %w", err)
		}
		ak, err := tpm2.Unmarshal[tpm2.TPMTPublic](area)
		if err != nil {
			return nil, fmt.Errorf("tpm: attestation key: %w", err)
		}
		if n.akPub, err = tpm2.Pub(*ak); err != nil {
			return nil, fmt.Errorf("tpm: attestation key: %w", err)
		}
	}
	if _, err := n.requote(ctx); err != nil {
		return nil, err
	}
	log.Info("node attested by its TPM", "agent_id", n.id.String(), "ek_type", ek.Type, "pcrs", n.pcrs)
	return n, nil
}

// selectors returns the node's current selectors (shared; do not modify).
func (n *node) selectors() []selector.Selector { return *n.sels.Load() }

// requote quotes the configured PCRs with a fresh nonce, verifies the quote
// in software and swaps the selectors. It reports whether they changed. On
// failure the PCR selectors are dropped (fail closed: entries that require
// a PCR value stop matching until a quote verifies again).
func (n *node) requote(ctx context.Context) (bool, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	sels := slices.Clone(n.fixed)
	values := map[int]string{}
	var qerr error
	if len(n.pcrs) > 0 {
		nonce := make([]byte, 32)
		if _, err := rand.Read(nonce); err != nil {
			return false, fmt.Errorf("tpm: nonce: %w", err)
		}
		q, err := n.tp.Quote(ctx, nonce, n.pcrs)
		if err == nil {
			var verified map[int][]byte
			if verified, err = tpm.VerifyQuote(n.akPub, q, nonce, n.pcrs); err == nil {
				for _, p := range n.pcrs {
					v := hex.EncodeToString(verified[p])
					values[p] = v
					sels = append(sels, selector.New("tpm", "pcr", "sha256:"+strconv.Itoa(p)+":"+v))
				}
				now := time.Now()
				n.last.Store(&now)
			}
		}
		if err != nil {
			qerr = fmt.Errorf("tpm: quote: %w", err)
		}
	}
	old := n.sels.Load()
	n.sels.Store(&sels)
	n.pcrv.Store(&values)
	changed := old == nil || !slices.Equal(*old, sels)
	return changed, qerr
}

// run re-quotes every interval and when poked (SIGHUP), calling onChange
// when the node's selectors changed.
func (n *node) run(ctx context.Context, onChange func(), quotes *prometheus.CounterVec) {
	t := time.NewTicker(n.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-n.poke:
		}
		changed, err := n.requote(ctx)
		if err != nil {
			quotes.WithLabelValues("error").Inc()
			n.log.Error("TPM quote failed; PCR selectors withdrawn until one verifies", "err", err)
		} else {
			quotes.WithLabelValues("ok").Inc()
		}
		if changed {
			n.log.Warn("node PCR selectors changed", "pcrs", n.pcrValues())
			onChange()
		}
	}
}

// requoteNow asks run for a quote now (coalesced).
func (n *node) requoteNow() {
	select {
	case n.poke <- struct{}{}:
	default:
	}
}

func (n *node) pcrValues() map[string]string {
	out := map[string]string{}
	if p := n.pcrv.Load(); p != nil {
		for k, v := range *p {
			out[strconv.Itoa(k)] = v
		}
	}
	return out
}

// rotateIntermediates replaces the TPM-signed CA intermediate at half its
// life; a failed rotation is retried (the current intermediate stays valid
// until it expires).
func (a *Agent) rotateIntermediates(ctx context.Context) {
	// Capped and short: a TPM that hung past the intermediate's life must
	// be used again as soon as it answers, not minutes later.
	const minRetry, maxRetry = time.Second, 30 * time.Second
	retry := minRetry
	for {
		// NextRotation is a wall-clock time; the timer runs on the
		// monotonic clock, which stops during suspend: re-check at least
		// every maxRetry.
		wait := time.Until(a.ca.NextRotation())
		t := time.NewTimer(min(max(wait, 0), maxRetry))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if wait > maxRetry {
			continue
		}
		if err := a.ca.RotateIntermediate(); err != nil {
			a.metrics.IntermRotation.WithLabelValues("error").Inc()
			a.log.Error("CA intermediate rotation failed; retrying", "err", err, "current_not_after", a.ca.Intermediate().NotAfter)
			// Nothing valid can be issued: try every second (an attempt
			// waits for a hung TPM, so this is no tight loop) to recover
			// as soon as the TPM answers.
			if !a.ca.CanIssue() {
				retry = minRetry
			}
			t := time.NewTimer(retry)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			if a.ca.CanIssue() {
				retry = min(2*retry, maxRetry)
			}
			continue
		}
		retry = minRetry
		a.store.Wake() // mint what the expired intermediate could not
		a.metrics.IntermRotation.WithLabelValues("ok").Inc()
		a.log.Info("rotated the CA intermediate (signed by the TPM-held root)", "not_after", a.ca.Intermediate().NotAfter)
	}
}
