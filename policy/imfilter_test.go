package policy_test

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"portcullis/policy"
)

func filter(mut func(*policy.IMFilterConfig)) *policy.IMFilter {
	c := policy.DefaultIMFilterConfig()
	c.URLs.AllowNotice = "(links disabled)"
	c.URLs.LocalDomains = []string{"example.test"}
	c.URLs.Rules = append(c.URLs.Rules, policy.URLRule{Prefix: "javascript:", Action: policy.ActionBlock})
	for i := range c.URLs.Rules {
		if c.URLs.Rules[i].Prefix == "gopher:" {
			c.URLs.Rules[i].Action = policy.ActionWarn
		}
	}
	if mut != nil {
		mut(&c)
	}
	return policy.NewIMFilter(c)
}

func TestIMFilterURLs(t *testing.T) {
	f := filter(nil)
	for _, c := range []struct {
		name, ct, body string
		action, want   string
	}{
		{"no link", "text/plain", "hello there", "", ""},
		{"allow", "text/plain", "see http://a.example.com/x and www.b.com", policy.ActionAllow, "see _http://a.example.com/x and _www.b.com\r\n(links disabled)"},
		{"upper case scheme", "text/plain; charset=utf-8", "HTTPS://a.com", policy.ActionAllow, "_HTTPS://a.com\r\n(links disabled)"},
		{"inside a word is not a link", "text/plain", "xhttp://a.com", "", ""},
		{"already safe", "text/plain", "_http://a.com", "", ""},
		{"block", "text/plain", "click javascript:alert(1)", policy.ActionBlock, ""},
		{"warn", "text/plain", "old gopher://g.com", policy.ActionWarn, "Warning: this message contains links; open them only if you trust the sender.\r\nold gopher://g.com"},
		{"html", "text/html", `<a href="http://a.com">x</a>`, policy.ActionAllow, `<a href="_http://a.com">x</a><p>(links disabled)</p>`},
		{"broken html", "text/html", `<a href="http://a.com`, policy.ActionAllow, `<a href="_http://a.com<p>(links disabled)</p>`},
		{"unknown type passes", "application/im-iscomposing+xml", "http://a.com", "", ""},
	} {
		v, err := f.Message(c.ct, []byte(c.body))
		if err != nil || v.Action != c.action || (c.want != "" && string(v.Body) != c.want) {
			t.Errorf("%s: %+v %q %v", c.name, v, v.Body, err)
		}
	}
	// Local links are left alone when asked.
	f = filter(func(c *policy.IMFilterConfig) { c.URLs.IgnoreLocalLinks = true })
	for _, body := range []string{"http://intranet/x", "https://wiki.example.test/p", "http://10.1.2.3/", "http://user@portal.example.test"} {
		if v, _ := f.Message("text/plain", []byte(body)); v.Action != "" {
			t.Errorf("local link %q: %+v", body, v)
		}
	}
	if v, _ := f.Message("text/plain", []byte("http://example.test.evil.com/")); v.Action != policy.ActionAllow {
		t.Errorf("look-alike of a local domain treated as local: %+v", v)
	}
}

func TestIMFilterCPIM(t *testing.T) {
	f := filter(nil)
	body := "From: <sip:alice@example.test>\r\nTo: <sip:bob@partner.test>\r\n\r\nContent-Type: text/plain\r\nContent-Length: 20\r\n\r\ngo to http://a.com/"
	v, err := f.Message("message/cpim", []byte(body))
	if err != nil || v.Action != policy.ActionAllow || !strings.HasSuffix(string(v.Body), "\r\n\r\ngo to _http://a.com/\r\n(links disabled)") || strings.Contains(string(v.Body), "Content-Length") {
		t.Fatalf("cpim: %+v %q %v", v, v.Body, err)
	}
	blocked := "From: <sip:a@x.test>\r\n\r\nContent-Type: text/plain\r\n\r\njavascript:x"
	if v, _ := f.Message("message/cpim", []byte(blocked)); v.Action != policy.ActionBlock {
		t.Fatalf("cpim block: %+v", v)
	}
	nested := "A: b\r\n\r\nContent-Type: message/cpim\r\n\r\nA: b\r\n\r\nContent-Type: message/cpim\r\n\r\nA: b\r\n\r\nContent-Type: text/plain\r\n\r\nhttp://x.com"
	if _, err := f.Message("message/cpim", []byte(nested)); !errors.Is(err, policy.ErrCPIMTooDeep) {
		t.Fatalf("nested cpim: %v", err)
	}
	if _, err := f.Message("message/cpim", []byte("no blank line")); !errors.Is(err, policy.ErrCPIMMalformed) {
		t.Fatalf("malformed cpim: %v", err)
	}
	if _, err := f.Message("text/plain", []byte{'h', 0xff, 0xfe}); !errors.Is(err, policy.ErrBodyNotUTF8) {
		t.Fatalf("invalid utf-8: %v", err)
	}
}

func TestIMFilterFiles(t *testing.T) {
	sdp := func(name string) []byte {
		return []byte("v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=message 7654 TCP/MSRP *\r\na=sendonly\r\na=file-selector:name:\"" + name + "\" type:application/octet-stream size:1024\r\n")
	}
	f := filter(nil)
	if v := f.SDP(sdp("setup.EXE")); v.Action != policy.ActionBlock || v.Reason != "file setup.EXE" {
		t.Fatalf("exe offer: %+v", v)
	}
	if v := f.SDP(sdp("report.pdf")); v.Action != "" {
		t.Fatalf("pdf offer: %+v", v)
	}
	// An escaped quote inside the name does not hide the extension, and a
	// name that cannot be read does not pass.
	if v := f.SDP(sdp(`evil\"name.exe`)); v.Action != policy.ActionBlock {
		t.Fatalf("escaped quote: %+v", v)
	}
	if v := f.SDP([]byte("m=message 1 TCP/MSRP *\r\na=file-selector:name:setup.exe type:x/y\r\n")); v.Action != policy.ActionBlock {
		t.Fatalf("unquoted name: %+v", v)
	}
	inv := "Application-Name: File Transfer\r\nInvitation-Command: INVITE\r\nApplication-File: run.bat\r\nApplication-FileSize: 10\r\n"
	if v, _ := f.Message("text/x-msmsgsinvite; charset=UTF-8", []byte(inv)); v.Action != policy.ActionBlock {
		t.Fatalf("msmsgsinvite: %+v", v)
	}
	all := filter(func(c *policy.IMFilterConfig) { c.Files.Mode = "block_all" })
	if v := all.SDP(sdp("report.pdf")); v.Action != policy.ActionBlock {
		t.Fatalf("block all: %+v", v)
	}
	off := filter(func(c *policy.IMFilterConfig) { c.Files.Mode = "off" })
	if v := off.SDP(sdp("setup.exe")); v.Action != "" {
		t.Fatalf("off: %+v", v)
	}
}

// What a client can wrap a message in does not get it past the filter:
// multipart/alternative (what Lync sends), parts in quoted-printable or
// base64, other text types (text/rtf). Each of these passed unscreened.
func TestIMFilterWrappedBodies(t *testing.T) {
	f := filter(nil)
	mp := func(parts ...string) string {
		return "--b1\r\n" + strings.Join(parts, "\r\n--b1\r\n") + "\r\n--b1--\r\n"
	}
	const ct = "multipart/alternative; boundary=b1"
	for _, c := range []struct {
		name, ct, body, action string
	}{
		{"text/rtf", "text/rtf", `{\rtf1 click javascript:alert(1)}`, policy.ActionBlock},
		{"a plain part", ct, mp("Content-Type: text/plain\r\n\r\nhello", "Content-Type: text/html\r\n\r\n<a href=\"javascript:x()\">x</a>"), policy.ActionBlock},
		{"a part with no type", ct, mp("\r\njavascript:alert(1)"), policy.ActionBlock},
		{"quoted-printable", ct, mp("Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\njava=\r\nscript=3Aalert(1)"), policy.ActionBlock},
		{"base64", ct, mp("Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n" + base64.StdEncoding.EncodeToString([]byte("javascript:alert(1)"))), policy.ActionBlock},
		{"nested", "multipart/mixed; boundary=outer", "--outer\r\nContent-Type: " + ct + "\r\n\r\n" + mp("\r\njavascript:alert(1)") + "\r\n--outer--\r\n", policy.ActionBlock},
		{"a file offer in a multipart INVITE body", "multipart/mixed; boundary=b1", mp("Content-Type: application/sdp\r\n\r\nm=message 1 TCP/MSRP *\r\na=file-selector:name:\"setup.exe\" type:x/y\r\n"), policy.ActionBlock},
		{"nothing to find", ct, mp("Content-Type: text/plain\r\n\r\nhello", "Content-Type: text/html\r\n\r\n<b>hello</b>"), ""},
	} {
		if v, err := f.Message(c.ct, []byte(c.body)); err != nil || v.Action != c.action {
			t.Errorf("%s: %+v %v, want %q", c.name, v, err, c.action)
		}
	}
	// Allowed links are made non-clickable in every part, the parts kept.
	v, err := f.Message(ct, []byte(mp("Content-Type: text/plain\r\n\r\nsee http://a.com", "Content-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<a href=3D\"http://a.com\">a</a>")))
	if err != nil || v.Action != policy.ActionAllow || !v.Changed {
		t.Fatalf("allow in parts: %+v %v", v, err)
	}
	body := string(v.Body)
	if !strings.Contains(body, "see _http://a.com") || !strings.Contains(body, `<a href="_http://a.com">`) || strings.Count(body, "--b1") != 3 || strings.Contains(body, "quoted-printable") {
		t.Fatalf("rewritten body:\n%s", body)
	}
	// What cannot be read does not pass.
	for _, c := range []struct{ name, ct, body string }{
		{"no boundary", "multipart/alternative", "--x\r\n\r\nhi\r\n--x--"},
		{"unknown transfer encoding", ct, mp("Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 a")},
		{"broken base64", ct, mp("Content-Transfer-Encoding: base64\r\n\r\n!!!!")},
		{"too many parts", ct, mp(strings.Split(strings.Repeat("\r\nx,", 17), ",")[:17]...)},
		{"not closed", ct, "--b1\r\n\r\nhello"},
	} {
		if _, err := f.Message(c.ct, []byte(c.body)); err == nil {
			t.Errorf("%s: passed", c.name)
		}
	}
}

func FuzzIMFilter(f *testing.F) {
	for _, s := range []string{"http://a.com", "<a href='www.x.com'>", "A: b\r\n\r\nContent-Type: text/html\r\n\r\n<b>ftp:x</b>", "Application-File: a.exe", "\xff\xfe"} {
		f.Add("text/plain", []byte(s))
		f.Add("message/cpim", []byte(s))
	}
	f.Add("multipart/alternative; boundary=b", []byte("--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nhttp=3A//a.com\r\n--b\r\n\r\nx\r\n--b--\r\n"))
	f.Add("text/rtf", []byte("{\\rtf1 http://a.com}"))
	flt := filter(func(c *policy.IMFilterConfig) { c.URLs.IgnoreLocalLinks = true })
	f.Fuzz(func(t *testing.T, ct string, body []byte) {
		v, err := flt.Message(ct, body)
		if err == nil && v.Changed && v.Action == "" {
			t.Fatal("body changed with no action")
		}
		flt.SDP(body)
	})
}
