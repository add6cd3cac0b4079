package core

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"portcullis/access"
	"portcullis/core/store"
)

// ErrBadAOR is returned for an address of record that is not sip:user@domain.
var ErrBadAOR = errors.New("address of record must be sip:user@domain")

var (
	userRE   = regexp.MustCompile(`^[A-Za-z0-9._~+-]{1,64}$`)
	domainRE = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
)

// ParseAOR checks an address of record and returns it canonical (domain in
// lower case) with its user and domain. The domain is the digest realm.
func ParseAOR(s string) (aor, user, domain string, err error) {
	rest, ok := strings.CutPrefix(s, "sip:")
	if !ok {
		return "", "", "", fmt.Errorf("%q: %w", s, ErrBadAOR)
	}
	user, domain, ok = strings.Cut(rest, "@")
	domain = strings.ToLower(domain)
	if !ok || !userRE.MatchString(user) || len(domain) > 253 || !domainRE.MatchString(domain) {
		return "", "", "", fmt.Errorf("%q: %w", s, ErrBadAOR)
	}
	return "sip:" + user + "@" + domain, user, domain, nil
}

// MinPasswordLen is the shortest password accepted.
const MinPasswordLen = 10

// AddUser creates a user with a password; only its digests are stored.
func AddUser(ctx context.Context, st *store.Store, aor, password string) error {
	u, err := withDigests(aor, password)
	if err != nil {
		return err
	}
	return st.AddUser(ctx, u)
}

// SetPassword changes a user's password.
func SetPassword(ctx context.Context, st *store.Store, aor, password string) error {
	u, err := withDigests(aor, password)
	if err != nil {
		return err
	}
	return st.SetHA1(ctx, u.AOR, u.HA1MD5, u.HA1SHA256)
}

// withDigests checks an address and a password and returns the user with
// the password's digests (HA1 per algorithm, in the user's realm).
func withDigests(aor, password string) (store.User, error) {
	aor, user, domain, err := ParseAOR(aor)
	if err != nil {
		return store.User{}, err
	}
	if err := checkPassword(password); err != nil {
		return store.User{}, err
	}
	return store.User{AOR: aor, Username: user, Realm: domain,
		HA1MD5: access.HA1(access.DigestMD5, user, domain, password), HA1SHA256: access.HA1(access.DigestSHA256, user, domain, password)}, nil
}

func checkPassword(p string) error {
	if len(p) < MinPasswordLen || len(p) > 256 || strings.ContainsAny(p, "\r\n") {
		return fmt.Errorf("password must be %d to 256 characters on one line", MinPasswordLen)
	}
	return nil
}
