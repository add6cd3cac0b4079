// Package store is the core's durable state. The embedded default is SQLite
// (modernc.org/sqlite, no cgo) in the data folder; the schema is migrated
// forward at open.
package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"portcullis/internal/config"
	"portcullis/internal/flock"
)

// Config is the core's `store` section.
type Config struct {
	Driver string `yaml:"driver"` // sqlite
	Path   string `yaml:"path"`   // database file, for sqlite
}

// Validate checks the section.
func (c *Config) Validate(v *config.V) {
	switch c.Driver {
	case "sqlite":
		v.CheckNotEmpty("path", c.Path)
	case "postgres":
		v.Errorf("driver", "postgres is not available in this release; use sqlite")
	default:
		v.Errorf("driver", "must be sqlite, got %q", c.Driver)
	}
}

// Store is the core's state.
type Store struct {
	db   *sql.DB
	lock *flock.Lock
	// Statements on every request's path, prepared once (preparing them
	// per query was a tenth of the core's CPU under load).
	userByDigest, userByAOR, bindings, dataVersion *sql.Stmt
	cache                                          *cache
}

// ErrInUse is returned when another process has the store open.
var ErrInUse = errors.New("store is in use by another process")

// Open opens (creating if needed) the store for a server and runs pending
// migrations. One server at a time may have a SQLite store open.
func Open(ctx context.Context, c Config) (*Store, error) {
	if c.Driver != "sqlite" {
		return nil, fmt.Errorf("store driver %q not supported", c.Driver)
	}
	lock, err := flock.Acquire(c.Path + ".lock")
	if err != nil {
		if errors.Is(err, flock.ErrLocked) {
			return nil, fmt.Errorf("%w: %v", ErrInUse, err)
		}
		return nil, err
	}
	return open(ctx, c, lock)
}

// OpenShared opens the store for an operator command while a server may be
// running (SQLite in WAL mode serialises the writers).
func OpenShared(ctx context.Context, c Config) (*Store, error) {
	if c.Driver != "sqlite" {
		return nil, fmt.Errorf("store driver %q not supported", c.Driver)
	}
	return open(ctx, c, nil)
}

func open(ctx context.Context, c Config, lock *flock.Lock) (*Store, error) {
	dsn := "file:" + filepath.ToSlash(c.Path) + "?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		_ = lock.Release()
		return nil, err
	}
	db.SetMaxOpenConns(1) // SQLite serialises writers; one connection avoids SQLITE_BUSY between our own goroutines
	s := &Store{db: db, lock: lock, cache: newCache()}
	if err := s.migrate(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("store %s: %w", c.Path, err)
	}
	if err := s.prepare(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("store %s: %w", c.Path, err)
	}
	return s, nil
}

func (s *Store) prepare(ctx context.Context) error {
	var err error
	for _, p := range []struct {
		st  **sql.Stmt
		sql string
	}{
		{&s.userByDigest, `SELECT ` + userColumns + ` FROM users WHERE username = ? AND realm = ?`},
		{&s.userByAOR, `SELECT ` + userColumns + ` FROM users WHERE aor = ?`},
		{&s.bindings, `SELECT ` + bindingColumns + ` FROM bindings WHERE aor = ? ORDER BY contact`},
		{&s.dataVersion, `PRAGMA data_version`},
	} {
		if *p.st, err = s.db.PrepareContext(ctx, p.sql); err != nil {
			return err
		}
	}
	return nil
}

// Close closes the database and releases the lock.
func (s *Store) Close() error {
	for _, st := range []*sql.Stmt{s.userByDigest, s.userByAOR, s.bindings, s.dataVersion} {
		if st != nil {
			st.Close()
		}
	}
	err := s.db.Close()
	return errors.Join(err, s.lock.Release())
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.db.PingContext(ctx) }

// migrations are applied in order; never edit one that has shipped, add one.
var migrations = []string{
	1: `CREATE TABLE settings (
		key   TEXT PRIMARY KEY,
		value TEXT NOT NULL
	)`,
	// Users: digest HA1s per realm (RFC 8760), never a password.
	// Bindings: one row per registered contact (RFC 3261 §10.3).
	2: `CREATE TABLE users (
		aor        TEXT PRIMARY KEY,
		username   TEXT NOT NULL,
		realm      TEXT NOT NULL,
		ha1_md5    TEXT NOT NULL,
		ha1_sha256 TEXT NOT NULL,
		disabled   INTEGER NOT NULL DEFAULT 0,
		created_at TEXT NOT NULL,
		UNIQUE (username, realm)
	);
	CREATE TABLE bindings (
		aor        TEXT NOT NULL REFERENCES users(aor) ON DELETE CASCADE,
		contact    TEXT NOT NULL,
		call_id    TEXT NOT NULL,
		cseq       INTEGER NOT NULL,
		expires_at INTEGER NOT NULL,
		source     TEXT NOT NULL DEFAULT '',
		PRIMARY KEY (aor, contact)
	);
	CREATE INDEX bindings_expiry ON bindings (expires_at)`,
	// Path (RFC 3327): the route to a user registered through an edge.
	3: `ALTER TABLE bindings ADD COLUMN path TEXT NOT NULL DEFAULT ''`,
	// Meetings (Focus Factory) and their durable per-user state: roles
	// given, lobby decisions.
	4: `CREATE TABLE meetings (
		id         TEXT PRIMARY KEY,
		organizer  TEXT NOT NULL,
		subject    TEXT NOT NULL DEFAULT '',
		admission  TEXT NOT NULL,
		lobby      INTEGER NOT NULL DEFAULT 0,
		locked     INTEGER NOT NULL DEFAULT 0,
		conf_key   TEXT NOT NULL UNIQUE,
		expires_at INTEGER NOT NULL DEFAULT 0,
		created_at TEXT NOT NULL
	);
	CREATE INDEX meetings_organizer ON meetings (organizer);
	CREATE TABLE meeting_users (
		meeting_id TEXT NOT NULL REFERENCES meetings(id) ON DELETE CASCADE,
		user       TEXT NOT NULL,
		role       TEXT NOT NULL DEFAULT '',
		access     TEXT NOT NULL DEFAULT '',
		PRIMARY KEY (meeting_id, user)
	)`,
}

func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		applied_at TEXT NOT NULL
	)`); err != nil {
		return err
	}
	var current int
	if err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&current); err != nil {
		return err
	}
	if current > len(migrations)-1 {
		return fmt.Errorf("schema version %d is newer than this binary knows (%d)", current, len(migrations)-1)
	}
	for v := current + 1; v < len(migrations); v++ {
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", v, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations(version, applied_at) VALUES (?, ?)`, v, time.Now().UTC().Format(time.RFC3339)); err != nil {
			tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	return nil
}

// SchemaVersion is the highest migration applied.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}

// DeploymentID returns the identifier this store was given when first
// opened, creating it then. It names the deployment in logs and endpoints.json.
func (s *Store) DeploymentID(ctx context.Context) (string, error) {
	return s.setOnce(ctx, "deployment_id", 8)
}

// RouteKey returns the key the core signs its Record-Route and flow tokens
// with, made when first asked for, so that dialogs in progress keep
// their routes across a restart. It is as secret as the digests.
func (s *Store) RouteKey(ctx context.Context) ([]byte, error) {
	h, err := s.setOnce(ctx, "route_key", 32)
	if err != nil {
		return nil, err
	}
	return hex.DecodeString(h)
}

// setOnce returns a setting, first set to n random bytes (in hex) by
// whoever asks first.
func (s *Store) setOnce(ctx context.Context, key string, n int) (string, error) {
	var v string
	err := s.db.QueryRowContext(ctx, `SELECT value FROM settings WHERE key = ?`, key).Scan(&v)
	if err == nil {
		return v, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return "", err
	}
	b := make([]byte, n)
	_, _ = rand.Read(b)
	if _, err := s.db.ExecContext(ctx, `INSERT OR IGNORE INTO settings(key, value) VALUES (?, ?)`, key, hex.EncodeToString(b)); err != nil {
		return "", err
	}
	return s.setOnce(ctx, key, n)
}

// queryAll runs a query and scans every row.
func queryAll[T any](ctx context.Context, db *sql.DB, scan func(interface{ Scan(...any) error }) (T, error), q string, args ...any) ([]T, error) {
	rows, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
