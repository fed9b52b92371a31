package agent

import (
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/nodeward/nodeward/agent/config"
	"github.com/nodeward/nodeward/agent/metrics"
	"github.com/nodeward/nodeward/workloadapi"
	"github.com/nodeward/nodeward/workloadapi/connlimit"
)

// Each Workload API connection holds two file descriptors: the socket and
// the caller's pidfd. fdReserve is kept for everything else the agent opens
// (listeners, data and audit files, admin connections).
const (
	fdsPerConn    = 2
	minFDReserve  = 16
	maxFDReserve  = 64
	fdReserveFrac = 4 // reserve at most 1/fdReserveFrac of the limit
)

// limitsState is the agent's side of the limits section.
type limitsState struct {
	cfg config.Limits // after fitting to the file descriptor limit
	m   *metrics.Limits
	l   atomic.Pointer[connlimit.Listener] // set while serving
}

// newLimits fits cfg to the process's file descriptor limit and registers
// the metrics.
func newLimits(cfg config.Limits, m *metrics.Metrics, log *slog.Logger) *limitsState {
	s := &limitsState{cfg: fitFDs(cfg, fileLimit(), log)}
	s.m = m.RegisterLimits(func() float64 {
		if l := s.l.Load(); l != nil {
			all, _ := l.Open(0)
			return float64(all)
		}
		return 0
	})
	return s
}

// fitFDs lowers max_conns so that open connections cannot use every file
// descriptor, and max_conns_per_uid to a quarter of that, so that one uid
// cannot take every slot either. nofile 0 means unknown (no change).
func fitFDs(cfg config.Limits, nofile uint64, log *slog.Logger) config.Limits {
	if nofile == 0 {
		return cfg
	}
	reserve := min(max(nofile/fdReserveFrac, minFDReserve), maxFDReserve)
	fit := 1
	if nofile > reserve {
		fit = max(1, int((nofile-reserve)/fdsPerConn))
	}
	if cfg.MaxConns <= fit {
		return cfg
	}
	perUID := min(cfg.MaxConnsPerUID, max(1, fit/4))
	log.Warn("the file descriptor limit is too low for limits.max_conns; lowering it (raise LimitNOFILE / ulimit -n)",
		"nofile", nofile, "max_conns", fit, "configured_max_conns", cfg.MaxConns,
		"max_conns_per_uid", perUID, "configured_max_conns_per_uid", cfg.MaxConnsPerUID)
	cfg.MaxConns, cfg.MaxConnsPerUID = fit, perUID
	return cfg
}

// server returns the Workload API server's limits.
func (s *limitsState) server() workloadapi.Limits {
	return workloadapi.Limits{
		MaxStreams:        s.cfg.MaxStreams,
		MaxStreamsPerUID:  s.cfg.MaxStreamsPerUID,
		MaxStreamsPerConn: uint32(s.cfg.MaxStreamsPerConn),
		IdleTimeout:       time.Duration(s.cfg.IdleTimeout),
		Rate:              s.cfg.Rate,
		Burst:             s.cfg.Burst,
	}
}

// limited counts a refused call or connection.
func (s *limitsState) limited(reason string) { s.m.Limited.WithLabelValues(reason).Inc() }

// listener wraps the Workload API listener with the connection caps; reads
// of a uid over its rate budget wait for readDelay.
func (s *limitsState) listener(l net.Listener, log *slog.Logger, readDelay func(uint32) time.Duration) net.Listener {
	cl := connlimit.New(l, connlimit.Config{
		MaxConns:       s.cfg.MaxConns,
		MaxConnsPerUID: s.cfg.MaxConnsPerUID,
		Refused:        s.limited,
		AcceptError:    func(kind string) { s.m.AcceptErrors.WithLabelValues(kind).Inc() },
		Logger:         log,
		ReadDelay:      readDelay,
	})
	s.l.Store(cl)
	return cl
}

// warnReload says that limits changes need a restart.
func warnLimitsReload(log *slog.Logger, old, cfg *config.Agent) {
	if old.Limits != cfg.Limits {
		log.Warn("reload: limits changes need a restart; keeping the old values")
	}
}
