package store

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// The read cache keeps users and bindings in memory, so that a request on
// the proxy's path does not read SQLite (under SIP load those reads were an
// eighth of the core's CPU, and the single connection serialised every
// request behind them).
//
// Coherence:
//   - this process's writes go through the Store, which drops the affected
//     entries (and bumps the generation, so that a read racing a write does
//     not put back what it read before the write);
//   - another process's writes (the operator's `portcullis user …` commands
//     on the shared SQLite file) are noticed through PRAGMA data_version,
//     which changes only when another connection commits; it is read at most
//     every cacheCheckEvery, and any change empties the cache. An operator's
//     change therefore takes effect within that interval.
const (
	cacheCheckEvery = 200 * time.Millisecond
	// cacheMaxEntries bounds each map; past it the map starts again empty
	// (lookups of unknown users are never cached, so only real users and
	// their bindings fill it).
	cacheMaxEntries = 100_000
)

type cache struct {
	mu        sync.Mutex
	gen       uint64
	byAOR     map[string]User
	byDigest  map[digestKey]User
	bindings  map[string][]Binding // every binding of an AOR, expired ones included
	checkedAt atomic.Int64         // unix nanoseconds of the last data_version read
	checking  atomic.Bool
	version   int64 // last data_version seen
}

type digestKey struct{ username, realm string }

func newCache() *cache {
	c := &cache{}
	c.reset()
	return c
}

// reset empties the cache; the caller holds mu (or owns c).
func (c *cache) reset() {
	c.gen++
	c.byAOR = map[string]User{}
	c.byDigest = map[digestKey]User{}
	c.bindings = map[string][]Binding{}
}

// dropUser forgets one address of record (user and bindings).
func (c *cache) dropUser(aor string) {
	c.mu.Lock()
	c.gen++
	if u, ok := c.byAOR[aor]; ok {
		delete(c.byDigest, digestKey{u.Username, u.Realm})
	}
	delete(c.byAOR, aor)
	delete(c.bindings, aor)
	c.mu.Unlock()
}

// dropBindings forgets the bindings of one address of record, or of all
// when aor is "".
func (c *cache) dropBindings(aor string) {
	c.mu.Lock()
	c.gen++
	if aor == "" {
		c.bindings = map[string][]Binding{}
	} else {
		delete(c.bindings, aor)
	}
	c.mu.Unlock()
}

func (c *cache) dropAll() {
	c.mu.Lock()
	c.reset()
	c.mu.Unlock()
}

// generation is read before a database read; put* store the result only if
// no write happened in between.
func (c *cache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

func (c *cache) user(aor string) (User, bool) {
	c.mu.Lock()
	u, ok := c.byAOR[aor]
	c.mu.Unlock()
	return u, ok
}

func (c *cache) userByDigest(username, realm string) (User, bool) {
	c.mu.Lock()
	u, ok := c.byDigest[digestKey{username, realm}]
	c.mu.Unlock()
	return u, ok
}

func (c *cache) putUser(gen uint64, u User) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if len(c.byAOR) >= cacheMaxEntries {
		c.byAOR, c.byDigest = map[string]User{}, map[digestKey]User{}
	}
	c.byAOR[u.AOR] = u
	c.byDigest[digestKey{u.Username, u.Realm}] = u
}

// liveBindings returns a copy of the AOR's bindings not expired at now.
func (c *cache) liveBindings(aor string, now time.Time) ([]Binding, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	all, ok := c.bindings[aor]
	if !ok {
		return nil, false
	}
	var out []Binding
	for _, b := range all {
		if b.Expires.After(now) {
			out = append(out, b)
		}
	}
	return out, true
}

func (c *cache) putBindings(gen uint64, aor string, all []Binding) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if len(c.bindings) >= cacheMaxEntries {
		c.bindings = map[string][]Binding{}
	}
	c.bindings[aor] = all
}

// checkExternal empties the cache when another process has committed to
// the database since the last look. At most one caller reads data_version
// at a time, at most every cacheCheckEvery; the others go on with the
// cache as it is.
func (s *Store) checkExternal(ctx context.Context) {
	c := s.cache
	now := time.Now().UnixNano()
	if now-c.checkedAt.Load() < int64(cacheCheckEvery) || !c.checking.CompareAndSwap(false, true) {
		return
	}
	defer c.checking.Store(false)
	var v int64
	if err := s.dataVersion.QueryRowContext(ctx).Scan(&v); err != nil {
		c.dropAll() // cannot tell: trust nothing cached
		return
	}
	c.checkedAt.Store(now)
	c.mu.Lock()
	if v != c.version {
		c.version = v
		c.reset()
	}
	c.mu.Unlock()
}
