package access

import (
	"crypto/hmac"
	"crypto/md5" //nolint:gosec // RFC 8489 §9.2.2 long-term credential key is MD5
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // TURN REST API passwords are HMAC-SHA1 (coturn compatible)
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// TURN REST credentials (PROTOCOLS.md, MRAS role):
//
//	username = <expiry unix time>:<user>
//	password = base64(HMAC-SHA1(secret, username))
//
// the scheme coturn's --use-auth-secret and turnutils_uclient -W speak.

var (
	// ErrTURNMalformed: the username is not "<unix time>:<user>".
	ErrTURNMalformed = errors.New("malformed TURN username")
	// ErrTURNExpired: the credential's expiry time has passed.
	ErrTURNExpired = errors.New("TURN credential expired")
	// ErrWeakSecret: the shared secret is too short.
	ErrWeakSecret = errors.New("TURN shared secret too short (need at least 16 characters)")
)

// TURNCredential is a time-limited TURN username and password.
type TURNCredential struct {
	Username string    `json:"username"`
	Password string    `json:"password"`
	Expires  time.Time `json:"expires"`
}

// IssueTURN makes a credential for user valid for ttl from now.
func IssueTURN(secret []byte, user string, ttl time.Duration, now time.Time) TURNCredential {
	exp := now.Add(ttl).Truncate(time.Second)
	username := strconv.FormatInt(exp.Unix(), 10) + ":" + user
	return TURNCredential{Username: username, Password: TURNPassword(secret, username), Expires: exp}
}

// TURNPassword derives the password of a REST username.
func TURNPassword(secret []byte, username string) string {
	mac := hmac.New(sha1.New, secret)
	mac.Write([]byte(username))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// TURNKey is the RFC 8489 §9.2.2 long-term key MD5(username:realm:password).
func TURNKey(username, realm, password string) []byte {
	sum := md5.Sum([]byte(username + ":" + realm + ":" + password)) //nolint:gosec
	return sum[:]
}

// ParseTURNUsername checks a REST username's form and expiry and returns the
// user part. The user part may itself contain colons (sip:alice@example.test).
func ParseTURNUsername(username string, now time.Time) (string, error) {
	ts, user, ok := strings.Cut(username, ":")
	if !ok || user == "" || len(username) > 512 {
		return "", ErrTURNMalformed
	}
	exp, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || exp <= 0 {
		return "", ErrTURNMalformed
	}
	if now.Unix() >= exp {
		return "", fmt.Errorf("%w at %s", ErrTURNExpired, time.Unix(exp, 0).UTC().Format(time.RFC3339))
	}
	return user, nil
}

// LoadTURNSecret reads a shared secret file (surrounding white space ignored).
func LoadTURNSecret(file string) ([]byte, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: file does not exist; create it with `portcullis turn-cred --new-secret %s`", file, file)
		}
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	s := strings.TrimSpace(string(data))
	if len(s) < 16 {
		return nil, fmt.Errorf("%s: %w", file, ErrWeakSecret)
	}
	return []byte(s), nil
}

// NewTURNSecret writes a new random secret to file (NewSecretFile).
func NewTURNSecret(file string) error { return NewSecretFile(file) }

// NewSecretFile writes 32 random bytes (in hex, one line) to file with mode
// 0600; it refuses to overwrite one (ErrExists), and removes what it could
// not write whole.
func NewSecretFile(file string) error {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s: %w", file, ErrExists)
		}
		return err
	}
	_, werr := f.WriteString(hex.EncodeToString(b) + "\n")
	if err := errors.Join(werr, f.Close()); err != nil {
		_ = os.Remove(file)
		return err
	}
	return nil
}
