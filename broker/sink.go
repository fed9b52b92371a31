package broker

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nodeward/nodeward/sinks"
	"github.com/nodeward/nodeward/workloadapi/atomicfile"
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
}

func (s *sink) write(tok *Token) {
	if err := atomicfile.WriteOwned(s.path, []byte(tok.AccessToken+"\n"), s.mode, s.uid, s.gid); err != nil {
		s.log.Error("token sink write failed", "path", s.path, "err", err)
		return
	}
	if s.action != nil && !s.action.Empty() {
		// Off the refresh path: an action may take its time (bounded by
		// its timeout); runs are serialized by the action.
		go s.action.Run(context.Background())
	}
	s.log.Debug("token sink written", "path", s.path, "upstream", s.key.Upstream, "expires", tok.ExpiresAt)
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
// ctx ends); the cache's OnStore hook rewrites the files on every refresh.
func (b *Broker) runSinks(ctx context.Context) {
	for _, s := range b.sinks {
		go func() {
			delay := 500 * time.Millisecond
			for {
				id, err := b.api.identity(ctx)
				if err == nil {
					k := s.key
					k.SPIFFEID = id
					b.sinkFor.Store(k, s)
					if _, err = b.cache.Token(ctx, k); err == nil {
						return
					}
				}
				b.log.Warn("token sink: no token yet", "path", s.path, "err", err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(delay):
				}
				delay = min(2*delay, 30*time.Second)
			}
		}()
	}
}
