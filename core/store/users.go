package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

var (
	// ErrUserExists is returned when adding a user already in the store.
	ErrUserExists = errors.New("user already exists")
	// ErrNoUser is returned for a user not in the store.
	ErrNoUser = errors.New("no such user")
)

// User is a SIP user of the home domain. HA1s are hex digests of
// username:realm:password (RFC 8760 §3, RFC 2617 §3.2.2.2).
type User struct {
	AOR       string // sip:alice@example.test
	Username  string // alice
	Realm     string // example.test
	HA1MD5    string
	HA1SHA256 string
	Disabled  bool
	Created   time.Time
}

// AddUser stores a new user.
func (s *Store) AddUser(ctx context.Context, u User) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO users (aor, username, realm, ha1_md5, ha1_sha256, disabled, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?)`, u.AOR, u.Username, u.Realm, u.HA1MD5, u.HA1SHA256, u.Disabled, time.Now().UTC().Format(time.RFC3339))
	s.cache.dropUser(u.AOR)
	if err != nil && strings.Contains(err.Error(), "UNIQUE constraint failed") {
		return fmt.Errorf("%s: %w", u.AOR, ErrUserExists)
	}
	return err
}

// SetHA1 replaces a user's digests (a password change).
func (s *Store) SetHA1(ctx context.Context, aor, md5, sha256 string) error {
	return s.updateUser(ctx, aor, `UPDATE users SET ha1_md5 = ?, ha1_sha256 = ? WHERE aor = ?`, md5, sha256, aor)
}

// SetDisabled disables or enables a user. Disabling drops their bindings.
func (s *Store) SetDisabled(ctx context.Context, aor string, disabled bool) error {
	if err := s.updateUser(ctx, aor, `UPDATE users SET disabled = ? WHERE aor = ?`, disabled, aor); err != nil {
		return err
	}
	if disabled {
		_, err := s.db.ExecContext(ctx, `DELETE FROM bindings WHERE aor = ?`, aor)
		s.cache.dropUser(aor)
		return err
	}
	return nil
}

// DeleteUser removes a user and their bindings.
func (s *Store) DeleteUser(ctx context.Context, aor string) error {
	return s.updateUser(ctx, aor, `DELETE FROM users WHERE aor = ?`, aor)
}

func (s *Store) updateUser(ctx context.Context, aor, query string, args ...any) error {
	res, err := s.db.ExecContext(ctx, query, args...)
	s.cache.dropUser(aor)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%s: %w", aor, ErrNoUser)
	}
	return nil
}

const userColumns = `aor, username, realm, ha1_md5, ha1_sha256, disabled, created_at`

func scanUser(row interface{ Scan(...any) error }) (User, error) {
	var u User
	var created string
	err := row.Scan(&u.AOR, &u.Username, &u.Realm, &u.HA1MD5, &u.HA1SHA256, &u.Disabled, &created)
	u.Created, _ = time.Parse(time.RFC3339, created)
	return u, err
}

// UserByDigest finds a user by digest username and realm.
func (s *Store) UserByDigest(ctx context.Context, username, realm string) (User, error) {
	s.checkExternal(ctx)
	if u, ok := s.cache.userByDigest(username, realm); ok {
		return u, nil
	}
	gen := s.cache.generation()
	u, err := scanUser(s.userByDigest.QueryRowContext(ctx, username, realm))
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, fmt.Errorf("%s@%s: %w", username, realm, ErrNoUser)
	}
	if err == nil {
		s.cache.putUser(gen, u)
	}
	return u, err
}

// UserByAOR finds a user by address of record.
func (s *Store) UserByAOR(ctx context.Context, aor string) (User, error) {
	s.checkExternal(ctx)
	if u, ok := s.cache.user(aor); ok {
		return u, nil
	}
	gen := s.cache.generation()
	u, err := scanUser(s.userByAOR.QueryRowContext(ctx, aor))
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, fmt.Errorf("%s: %w", aor, ErrNoUser)
	}
	if err == nil {
		s.cache.putUser(gen, u)
	}
	return u, err
}

// Users lists every user, by address of record.
func (s *Store) Users(ctx context.Context) ([]User, error) {
	return queryAll(ctx, s.db, scanUser, `SELECT `+userColumns+` FROM users ORDER BY aor`)
}
