package unix

import (
	"os/user"
	"sync"
	"time"
)

// Kinds of id resolved by names.
const (
	kindUser  = 'u'
	kindGroup = 'g'
)

const (
	// nameTTL is how long a resolved (or unknown) id is cached.
	nameTTL = time.Minute
	// maxNames bounds the name cache; it is emptied when full.
	maxNames = 4096
)

// names caches uid and gid names so the user database (/etc/passwd, NSS) is
// not read per call. Unknown ids are cached too.
type names struct {
	mu sync.Mutex
	m  map[string]cachedName // key: kind byte + id

	now     func() time.Time                          // time.Now; replaced in tests
	resolve func(kind byte, id string) (string, bool) // osResolve; replaced in tests
}

type cachedName struct {
	name string
	ok   bool
	at   time.Time
}

func newNames() *names {
	return &names{m: make(map[string]cachedName), now: time.Now, resolve: osResolve}
}

// osResolve asks os/user for the name of a uid or gid. Any failure, not
// only "unknown id", yields no name: the name selector is then left out
// (fail closed) while the numeric one stays.
func osResolve(kind byte, id string) (string, bool) {
	if kind == kindUser {
		u, err := user.LookupId(id)
		if err != nil {
			return "", false
		}
		return u.Username, true
	}
	g, err := user.LookupGroupId(id)
	if err != nil {
		return "", false
	}
	return g.Name, true
}

// lookup returns the name of a uid (kindUser) or gid (kindGroup), cached
// for nameTTL.
func (n *names) lookup(kind byte, id string) (string, bool) {
	key := string(kind) + id
	now := n.now()
	n.mu.Lock()
	c, hit := n.m[key]
	n.mu.Unlock()
	if hit && now.Sub(c.at) < nameTTL {
		return c.name, c.ok
	}
	name, ok := n.resolve(kind, id)
	n.mu.Lock()
	if len(n.m) >= maxNames {
		clear(n.m)
	}
	n.m[key] = cachedName{name: name, ok: ok, at: now}
	n.mu.Unlock()
	return name, ok
}
