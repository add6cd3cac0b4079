package access_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/icholy/digest"

	"portcullis/access"
)

const (
	realm = "example.test"
	pass  = "correct horse battery"
)

func ha1Of(username, r, alg string) (string, error) {
	if username != "alice" || r != realm {
		return "", errors.New("no such user")
	}
	return access.HA1(alg, username, r, pass), nil
}

// answer computes credentials with icholy/digest (the client library sipgo
// uses), so the verifier is checked against another implementation.
func answer(t *testing.T, challenge, password string, count int) access.DigestParams {
	t.Helper()
	ch, err := digest.ParseChallenge(challenge)
	if err != nil {
		t.Fatal(err)
	}
	cred, err := digest.Digest(ch, digest.Options{Method: "REGISTER", URI: "sip:example.test", Username: "alice", Password: password, Count: count})
	if err != nil {
		t.Fatal(err)
	}
	p, err := access.ParseDigest(cred.String())
	if err != nil {
		t.Fatalf("parse %q: %v", cred.String(), err)
	}
	return p
}

func TestDigestVerify(t *testing.T) {
	d := access.NewDigest(map[string][]string{realm: {access.DigestSHA256, access.DigestMD5}}, time.Minute)
	chals := d.Challenges(realm, false)
	if len(chals) != 2 || !contains(chals[0], "algorithm=SHA-256") || !contains(chals[1], "algorithm=MD5") || !contains(chals[0], `qop="auth"`) {
		t.Fatalf("challenges %q", chals)
	}
	for i := range chals {
		c := d.Challenges(realm, false)[i] // a fresh nonce per algorithm: counts are per nonce
		p := answer(t, c, pass, 1)
		if err := d.Verify(p, "REGISTER", ha1Of); err != nil {
			t.Fatalf("%s: %v", p.Algorithm, err)
		}
		if err := d.Verify(p, "REGISTER", ha1Of); !errors.Is(err, access.ErrDigestReplay) {
			t.Fatalf("replay: %v", err)
		}
		if err := d.Verify(answer(t, c, pass, 2), "REGISTER", ha1Of); err != nil {
			t.Fatalf("next nonce count: %v", err)
		}
		if err := d.Verify(answer(t, c, "wrong password", 3), "REGISTER", ha1Of); !errors.Is(err, access.ErrDigestResponse) {
			t.Fatalf("wrong password: %v", err)
		}
		if err := d.Verify(answer(t, c, pass, 4), "INVITE", ha1Of); !errors.Is(err, access.ErrDigestResponse) {
			t.Fatalf("method swapped: %v", err)
		}
	}
	p := answer(t, chals[0], pass, 1)
	p.Username = "mallory"
	if err := d.Verify(p, "REGISTER", ha1Of); !errors.Is(err, access.ErrDigestUnknown) {
		t.Fatalf("unknown user: %v", err)
	}
	p = answer(t, chals[0], pass, 9)
	p.Nonce = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	if err := d.Verify(p, "REGISTER", ha1Of); !errors.Is(err, access.ErrDigestBadNonce) {
		t.Fatalf("forged nonce: %v", err)
	}
	other := access.NewDigest(map[string][]string{realm: {access.DigestSHA256}}, time.Minute)
	if err := d.Verify(answer(t, other.Challenges(realm, false)[0], pass, 1), "REGISTER", ha1Of); !errors.Is(err, access.ErrDigestBadNonce) {
		t.Fatalf("another server's nonce: %v", err)
	}
	p = answer(t, chals[0], pass, 10)
	p.QOP = ""
	if err := d.Verify(p, "REGISTER", ha1Of); !errors.Is(err, access.ErrDigestQOP) {
		t.Fatalf("no qop: %v", err)
	}
}

func TestDigestRealmPolicyAndStaleness(t *testing.T) {
	md5only := access.NewDigest(map[string][]string{realm: {access.DigestMD5}}, 50*time.Millisecond)
	chals := md5only.Challenges(realm, false)
	if len(chals) != 1 || !contains(chals[0], "algorithm=MD5") {
		t.Fatalf("MD5-only realm offers %q", chals)
	}
	sha := answer(t, access.NewDigest(map[string][]string{realm: {access.DigestSHA256}}, time.Minute).Challenges(realm, false)[0], pass, 1)
	if err := md5only.Verify(sha, "REGISTER", ha1Of); !errors.Is(err, access.ErrDigestAlgorithm) {
		t.Fatalf("SHA-256 in an MD5-only realm: %v", err)
	}
	p := answer(t, chals[0], pass, 1)
	time.Sleep(80 * time.Millisecond)
	if err := md5only.Verify(p, "REGISTER", ha1Of); !errors.Is(err, access.ErrDigestStale) {
		t.Fatalf("expired nonce: %v", err)
	}
	if c := md5only.Challenges(realm, true); !contains(c[0], "stale=true") {
		t.Fatalf("stale challenge %q", c)
	}
	p.Realm = "elsewhere.test"
	if err := md5only.Verify(p, "REGISTER", ha1Of); !errors.Is(err, access.ErrDigestRealm) {
		t.Fatalf("foreign realm: %v", err)
	}
}

func TestParseDigest(t *testing.T) {
	p, err := access.ParseDigest(`Digest username="al\"ice", realm="example.test",nonce="n,1", uri="sip:example.test", response="abc", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="c"`)
	if err != nil || p.Username != `al"ice` || p.Nonce != "n,1" || p.Algorithm != "SHA-256" || p.QOP != "auth" || p.NC != "00000001" {
		t.Fatalf("%+v %v", p, err)
	}
	for _, bad := range []string{"", "Basic abc", `Digest username="x`, `Digest realm="r"`, "Digest =x", `Digest username="a" realm="b"`} {
		if _, err := access.ParseDigest(bad); !errors.Is(err, access.ErrDigestSyntax) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func FuzzParseDigest(f *testing.F) {
	f.Add(`Digest username="alice", realm="example.test", nonce="x", uri="sip:a", response="r", qop=auth, nc=00000001, cnonce="c"`)
	f.Add(`Digest username="a\\\"b", realm=r, nonce=n, uri=u, response=z`)
	f.Add(`Digest ,,,=,"`)
	f.Fuzz(func(t *testing.T, s string) {
		p, err := access.ParseDigest(s)
		if err == nil && (p.Username == "" || p.Response == "") {
			t.Fatal("accepted without username or response")
		}
		if err == nil {
			d := access.NewDigest(map[string][]string{realm: {access.DigestSHA256, access.DigestMD5}}, time.Minute)
			_ = d.Verify(p, "REGISTER", ha1Of)
		}
	})
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
