package broker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nodeward/nodeward/internal/atomicfile"
	"github.com/nodeward/nodeward/sinks"
)

// SinkFile configures a token file for apps that only read files.
type SinkFile struct {
	Upstream string   `yaml:"upstream"`
	Audience string   `yaml:"audience"`
	Scopes   []string `yaml:"scopes"`
	Path     string   `yaml:"path"`
	Mode     string   `yaml:"mode"`  // octal, default "0600"
	Owner    *int     `yaml:"owner"` // uid; default: the broker's
	Group    *int     `yaml:"group"` // gid; default: the broker's
	// OnRotate runs after every rewrite (a command, or a signal to a PID
	// file's process or a systemd unit), as for svid_files.
	OnRotate sinks.OnRotate `yaml:"on_rotate"`
}

// sink writes one key's token to a file, atomically, on every refresh.
type sink struct {
	key    Key
	path   string
	mode   os.FileMode
	uid    int
	gid    int
	log    *slog.Logger
	action *sinks.Action
	run    func(*sinks.Action, sinks.Event) // runs the action off the refresh path, tracked
}

func (s *sink) write(tok *Token) {
	if err := atomicfile.WriteOwned(s.path, []byte(tok.AccessToken+"\n"), s.mode, s.uid, s.gid); err != nil {
		s.log.Error("token sink write failed", "path", s.path, "err", err)
		return
	}
	s.rotated(sinks.EventRotate)
	s.log.Debug("token sink written", "path", s.path, "upstream", s.key.Upstream, "expires", tok.ExpiresAt)
}

// rotated runs the on_rotate action for ev off the refresh path: an action
// may take its time (bounded by its timeout); runs are serialized by the
// action. The broker's runner ties it to the run context and waits for it at
// shutdown; without one (a sink outside a broker) the action tracks it.
func (s *sink) rotated(ev sinks.Event) {
	if s.action == nil || s.action.Empty() {
		return
	}
	if s.run != nil {
		s.run(s.action, ev)
		return
	}
	s.action.StartEvent(context.Background(), ev)
}

// remove deletes the token file (one unlink: a reader sees the whole old
// file or none) when its token may no longer be used, for example because
// the broker's identity was revoked, and runs on_rotate so the consumer
// notices.
func (s *sink) remove() {
	err := os.Remove(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		s.log.Error("token sink: cannot remove the token file of a revoked identity", "path", s.path, "err", err)
		return
	}
	s.log.Warn("token sink removed: the broker's identity was revoked or changed", "path", s.path, "upstream", s.key.Upstream)
	s.rotated(sinks.EventRevoked)
}

func parseMode(m string) (os.FileMode, error) {
	if m == "" {
		return 0o600, nil
	}
	var v uint32
	if _, err := fmt.Sscanf(m, "%o", &v); err != nil || v > 0o777 {
		return 0, fmt.Errorf("mode %q: want an octal permission such as 0600", m)
	}
	return os.FileMode(v), nil
}

// sinkKey builds the cache key of a sink (the SPIFFE ID is filled later).
func sinkKey(sf SinkFile, defaults []string) Key {
	scopes := slices.Clone(sf.Scopes)
	if len(scopes) == 0 {
		scopes = slices.Clone(defaults)
	}
	slices.Sort(scopes)
	return Key{Upstream: sf.Upstream, Audience: sf.Audience, Scopes: strings.Join(slices.Compact(scopes), " ")}
}

// runSinks fetches each sink's first token (retrying until it succeeds or
// ctx ends), and again after each change of the broker's identity; the
// cache's OnStore hook rewrites the files on every refresh.
func (b *Broker) runSinks(ctx context.Context) {
	for _, s := range b.sinks {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			for {
				wake := b.sinkWaiter()
				if !b.fillSink(ctx, s) {
					return
				}
				select {
				case <-ctx.Done():
					return
				case <-wake:
				}
			}
		}()
	}
}

// fillSink gets s its first token for the current identity; false when ctx ended.
func (b *Broker) fillSink(ctx context.Context, s *sink) bool {
	delay := 500 * time.Millisecond
	for {
		id, err := b.api.identity(ctx)
		if err == nil {
			k := s.key
			k.SPIFFEID = id
			b.sinkFor.Store(k, s)
			if _, err = b.cache.Token(ctx, k); err == nil {
				return true
			}
		}
		b.log.Warn("token sink: no token yet", "path", s.path, "err", err)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(delay):
		}
		delay = min(2*delay, 30*time.Second)
	}
}
