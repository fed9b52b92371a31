package federation

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/nodeward/nodeward/internal/atomicfile"
	"github.com/nodeward/nodeward/internal/safefs"
)

// loadCache reads the peer's cached bundle from the held cache directory;
// it wins over the bootstrap bundle, which it replaced when it was fetched.
// A missing file is no error; an unsafe one (symlink, not a regular file,
// foreign owner, group- or other-writable) is; one that does not parse is
// logged and left for the next fetch to replace.
func (p *peer) loadCache(dir *os.File) error {
	name := cacheName(p.TrustDomain)
	file, err := safefs.OpenFileAt(dir, name, false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cached bundle: %w", err)
	}
	defer func() { _ = file.Close() }() // read-only
	data, err := io.ReadAll(io.LimitReader(file, MaxBundleSize+1))
	if err != nil {
		return fmt.Errorf("cached bundle %s: %w", file.Name(), err)
	}
	b, err := parseBundle(p.TrustDomain, data)
	if err != nil {
		p.f.cfg.Log.Warn("federation: cached bundle ignored", "trust_domain", p.TrustDomain.Name(), "file", file.Name(), "err", err)
		return nil
	}
	p.current, p.st.Source = b, "cache"
	p.setSeqLocked(b)
	return nil
}

// writeCache stores b as the peer's cached bundle (0644: bundles are
// public), atomically, in the cache directory checked again first.
func (p *peer) writeCache(b interface{ Marshal() ([]byte, error) }) error {
	data, err := b.Marshal()
	if err != nil {
		return fmt.Errorf("marshal: %w", err)
	}
	dir, err := safefs.OpenDir(p.f.cfg.CacheDir, true)
	if err != nil {
		return fmt.Errorf("cache dir: %w", err)
	}
	_ = dir.Close() // checked; the write goes by name below
	return atomicfile.Write(filepath.Join(p.f.cfg.CacheDir, cacheName(p.TrustDomain)), data, 0o644)
}
