// This file: the Intelligent IM Filter (PROTOCOLS.md, Lync semantics) —
// links in instant messages, and file transfers.

package policy

import (
	"bytes"
	"errors"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"

	"portcullis/internal/config"
)

// IM filter errors: the body cannot be screened, so it does not pass.
var (
	ErrBodyNotUTF8   = errors.New("message body is not valid UTF-8")
	ErrCPIMTooDeep   = errors.New("message/cpim nested too deep")
	ErrCPIMMalformed = errors.New("malformed message/cpim body")
)

// URL actions.
const (
	ActionAllow = "allow" // pass, links made non-clickable with a "_" prefix
	ActionWarn  = "warn"  // pass, with a warning inserted
	ActionBlock = "block" // refuse: 403 to the sender
)

// IMFilterConfig is the edge's `im_filter` section (reloadable).
type IMFilterConfig struct {
	Enabled bool `yaml:"enabled"`
	// Inbound screens IMs coming in from outside (remote users and
	// partners); Outbound those leaving for partners and remote users.
	Inbound  bool             `yaml:"inbound"`
	Outbound bool             `yaml:"outbound"`
	URLs     URLFilterConfig  `yaml:"urls"`
	Files    FileFilterConfig `yaml:"files"`
}

// URLFilterConfig decides per scheme or prefix.
type URLFilterConfig struct {
	Rules []URLRule `yaml:"rules"`
	// AllowNotice, if set, is appended to a message whose links were made
	// non-clickable.
	AllowNotice string `yaml:"allow_notice"`
	// WarnText is inserted at the start of a message with a Warn link.
	WarnText string `yaml:"warn_text"`
	// IgnoreLocalLinks leaves links to local (intranet) hosts alone: hosts
	// without a dot, under a LocalDomains entry, or private addresses.
	IgnoreLocalLinks bool     `yaml:"ignore_local_links"`
	LocalDomains     []string `yaml:"local_domains"`
}

// URLRule is one scheme ("http:") or prefix ("www.") and its action.
type URLRule struct {
	Prefix string `yaml:"prefix"`
	Action string `yaml:"action"`
}

// FileFilterConfig screens file-transfer offers.
type FileFilterConfig struct {
	// Mode: off, block_all, or extensions (block those listed).
	Mode       string   `yaml:"mode"`
	Extensions []string `yaml:"extensions"`
}

// DefaultIMFilterConfig: on in both directions; Lync's default prefixes made
// non-clickable; executables blocked.
func DefaultIMFilterConfig() IMFilterConfig {
	var rules []URLRule
	for _, p := range []string{"callto:", "file:", "ftp.", "ftp:", "gopher:", "http:", "https:", "ldap:", "mailto:", "news:", "nntp:", "sip:", "sips:", "tel:", "telnet:", "www."} {
		rules = append(rules, URLRule{Prefix: p, Action: ActionAllow})
	}
	return IMFilterConfig{
		Enabled: true, Inbound: true, Outbound: true,
		URLs:  URLFilterConfig{Rules: rules, WarnText: "Warning: this message contains links; open them only if you trust the sender."},
		Files: FileFilterConfig{Mode: "extensions", Extensions: []string{".exe", ".bat", ".cmd", ".com", ".ps1", ".vbs", ".js", ".msi", ".scr", ".pif", ".jar", ".dll", ".reg", ".hta"}},
	}
}

// Validate checks the section.
func (c *IMFilterConfig) Validate(v *config.V) {
	uv := v.In("urls")
	seen := map[string]bool{}
	for i, r := range c.URLs.Rules {
		rv := uv.In("rules[" + config.Itoa(i) + "]")
		rv.Check(!seen[strings.ToLower(r.Prefix)], "prefix", "%q has a rule already", r.Prefix)
		seen[strings.ToLower(r.Prefix)] = true
		rv.Check(len(strings.TrimSpace(r.Prefix)) >= 2 && !strings.ContainsAny(r.Prefix, " \t\r\n"), "prefix", "must be a scheme or prefix without spaces, got %q", r.Prefix)
		rv.Check(r.Action == ActionAllow || r.Action == ActionWarn || r.Action == ActionBlock, "action", "must be allow, warn or block, got %q", r.Action)
	}
	fv := v.In("files")
	fv.Check(c.Files.Mode == "off" || c.Files.Mode == "block_all" || c.Files.Mode == "extensions", "mode", "must be off, block_all or extensions, got %q", c.Files.Mode)
	for i, e := range c.Files.Extensions {
		fv.Check(strings.HasPrefix(e, ".") && len(e) > 1, "extensions["+config.Itoa(i)+"]", "must start with a dot, got %q", e)
	}
}

// Verdict is what the filter decided about one message.
type Verdict struct {
	Action string // "" (nothing found), allow, warn, block
	// Reason names what decided a block ("link ftp:", "file a.exe"), safe
	// to put in a reason phrase or a quoted string.
	Reason string
	// Body and ContentType are the message to forward when Changed.
	Body    []byte
	Changed bool
	Links   int // links found and acted on
}

// IMFilter screens message bodies. It is immutable: a reload builds a new
// one.
type IMFilter struct {
	cfg   IMFilterConfig
	rules []URLRule // longest prefix first, lower case
	exts  map[string]bool
	find  *regexp.Regexp
}

// NewIMFilter compiles a validated configuration.
func NewIMFilter(c IMFilterConfig) *IMFilter {
	f := &IMFilter{cfg: c, exts: map[string]bool{}}
	var alts []string
	for _, r := range c.URLs.Rules {
		r.Prefix = strings.ToLower(r.Prefix)
		f.rules = append(f.rules, r)
	}
	slices.SortStableFunc(f.rules, func(a, b URLRule) int { return len(b.Prefix) - len(a.Prefix) })
	for _, r := range f.rules {
		alts = append(alts, regexp.QuoteMeta(r.Prefix))
	}
	if len(alts) > 0 {
		// A prefix counts at the start of a word: not inside another word
		// (so "xhttp:" is not "http:"), and not already made safe ("_http:").
		f.find = regexp.MustCompile(`(?i)(^|[^\p{L}\p{N}_.\-])(` + strings.Join(alts, "|") + `)`)
	}
	for _, e := range c.Files.Extensions {
		f.exts[strings.ToLower(e)] = true
	}
	return f
}

// Config is the filter's configuration.
func (f *IMFilter) Config() IMFilterConfig { return f.cfg }

// maxNesting bounds bodies inside bodies (message/cpim, multipart/*).
const maxNesting = 2

// Message screens an IM body of the given content type: text/plain and
// text/html, any other text/* as plain text (text/rtf, say), message/cpim
// and multipart/* by what they hold, file-transfer invitations. Other
// types (an is-composing notice, an image) carry no link a client shows,
// and pass unchanged.
func (f *IMFilter) Message(contentType string, body []byte) (Verdict, error) {
	return f.message(contentType, body, 0)
}

func (f *IMFilter) message(contentType string, body []byte, depth int) (Verdict, error) {
	mt := mediaType(contentType)
	switch mt {
	case "text/plain", "text/html":
		if !utf8.Valid(body) {
			return Verdict{}, ErrBodyNotUTF8
		}
		return f.text(body, mt == "text/html"), nil
	case "message/cpim":
		if depth >= maxNesting {
			return Verdict{}, ErrCPIMTooDeep
		}
		return f.cpim(body, depth)
	case "text/x-msmsgsinvite":
		return f.msmsgsinvite(body), nil
	case "application/sdp":
		return f.SDP(body), nil // a file-transfer offer in a part of a multipart INVITE
	}
	switch {
	case strings.HasPrefix(mt, "multipart/"):
		return f.multipart(contentType, body, depth)
	case strings.HasPrefix(mt, "text/"):
		// Another text type (text/rtf, text/enriched, ...): its links are
		// read as in plain text, or it would carry what text/plain may not.
		if !utf8.Valid(body) {
			return Verdict{}, ErrBodyNotUTF8
		}
		return f.text(body, false), nil
	}
	return Verdict{}, nil
}

func mediaType(ct string) string {
	mt, _, _ := strings.Cut(ct, ";")
	return strings.ToLower(strings.TrimSpace(mt))
}

// text acts on the links in a text/plain or text/html body.
func (f *IMFilter) text(body []byte, html bool) Verdict {
	if f.find == nil {
		return Verdict{}
	}
	s := string(body)
	idx := f.find.FindAllStringSubmatchIndex(s, -1)
	var v Verdict
	var allowAt []int
	for _, m := range idx {
		start, end := m[4], m[5]
		prefix := strings.ToLower(s[start:end])
		if f.cfg.URLs.IgnoreLocalLinks && f.local(s[start:], prefix) {
			continue
		}
		action := ActionAllow
		for _, r := range f.rules {
			if r.Prefix == prefix {
				action = r.Action
				break
			}
		}
		v.Links++
		switch action {
		case ActionBlock:
			return Verdict{Action: ActionBlock, Reason: "link " + prefix, Links: v.Links}
		case ActionWarn:
			v.Action = ActionWarn
		case ActionAllow:
			if v.Action == "" {
				v.Action = ActionAllow
			}
			allowAt = append(allowAt, start)
		}
	}
	if v.Action == "" {
		return Verdict{}
	}
	var b strings.Builder
	if v.Action == ActionWarn && f.cfg.URLs.WarnText != "" {
		if html {
			b.WriteString("<p>" + htmlEscape(f.cfg.URLs.WarnText) + "</p>")
		} else {
			b.WriteString(f.cfg.URLs.WarnText + "\r\n")
		}
	}
	last := 0
	for _, at := range allowAt {
		b.WriteString(s[last:at])
		b.WriteByte('_')
		last = at
	}
	b.WriteString(s[last:])
	if len(allowAt) > 0 && f.cfg.URLs.AllowNotice != "" {
		if html {
			b.WriteString("<p>" + htmlEscape(f.cfg.URLs.AllowNotice) + "</p>")
		} else {
			b.WriteString("\r\n" + f.cfg.URLs.AllowNotice)
		}
	}
	v.Body, v.Changed = []byte(b.String()), true
	return v
}

func htmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;").Replace(s)
}

// local reports whether the link starting at s (with prefix) points at an
// intranet host.
func (f *IMFilter) local(s, prefix string) bool {
	rest := s[len(prefix):]
	rest = strings.TrimPrefix(rest, "//")
	if i := strings.IndexAny(rest, "@"); i >= 0 && i < strings.IndexAny(rest+"/", "/?# \t\r\n") {
		rest = rest[i+1:] // user@host
	}
	host := rest
	if i := strings.IndexAny(host, "/?#:; \t\r\n\"'<>)]"); i >= 0 {
		host = host[:i]
	}
	if strings.HasSuffix(prefix, ".") { // "www.": the prefix is part of the host
		host = prefix + host
	}
	host = strings.ToLower(host)
	if host == "" {
		return false
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return a.IsPrivate() || a.IsLoopback() || a.IsLinkLocalUnicast()
	}
	if !strings.Contains(host, ".") {
		return true
	}
	for _, d := range f.cfg.URLs.LocalDomains {
		d = strings.ToLower(d)
		if host == d || strings.HasSuffix(host, "."+d) {
			return true
		}
	}
	return false
}

// cpim screens the message inside a message/cpim body (RFC 3862): message
// headers, a blank line, the MIME headers of the content, a blank line,
// the content.
func (f *IMFilter) cpim(body []byte, depth int) (Verdict, error) {
	msgHdrs, rest, ok := cutBlank(body)
	if !ok {
		return Verdict{}, ErrCPIMMalformed
	}
	mimeHdrs, content, ok := cutBlank(rest)
	if !ok {
		return Verdict{}, ErrCPIMMalformed
	}
	ct := "text/plain"
	for _, l := range strings.Split(string(mimeHdrs), "\n") {
		k, val, found := strings.Cut(strings.TrimRight(l, "\r"), ":")
		if found && strings.EqualFold(strings.TrimSpace(k), "Content-Type") {
			ct = strings.TrimSpace(val)
		}
	}
	v, err := f.message(ct, content, depth+1)
	if err != nil || !v.Changed {
		return v, err
	}
	var b bytes.Buffer
	b.Write(msgHdrs)
	b.WriteString("\r\n\r\n")
	for _, l := range strings.Split(string(mimeHdrs), "\n") {
		if k, _, _ := strings.Cut(l, ":"); strings.EqualFold(strings.TrimSpace(k), "Content-Length") {
			continue // the content changed length
		}
		b.WriteString(strings.TrimRight(l, "\r") + "\r\n")
	}
	b.WriteString("\r\n")
	b.Write(v.Body)
	v.Body = b.Bytes()
	return v, nil
}

// cutBlank splits at the first blank line (CRLF CRLF, or LF LF).
func cutBlank(b []byte) (head, rest []byte, ok bool) {
	for _, sep := range [][]byte{[]byte("\r\n\r\n"), []byte("\n\n")} {
		if i := bytes.Index(b, sep); i >= 0 {
			return bytes.TrimRight(b[:i], "\r\n"), b[i+len(sep):], true
		}
	}
	return nil, nil, false
}

// msmsgsinvite screens the legacy file-transfer invitation
// (text/x-msmsgsinvite: "Application-File: name" lines).
func (f *IMFilter) msmsgsinvite(body []byte) Verdict {
	for _, l := range strings.Split(string(body), "\n") {
		k, val, found := strings.Cut(strings.TrimRight(l, "\r"), ":")
		if found && strings.EqualFold(strings.TrimSpace(k), "Application-File") {
			if v, blocked := f.file(strings.TrimSpace(val)); blocked {
				return v
			}
		}
	}
	return Verdict{}
}

// fileSelectorName matches the name in an RFC 5547 file-selector
// attribute: name:"…", a quoted string (RFC 5547 §6, RFC 4566 §9), which
// may hold escaped characters (\").
var fileSelectorName = regexp.MustCompile(`(?i)(?:^|\s)name:"((?:[^"\\]|\\.)*)"`)

// unquote undoes quoted-pair escapes.
func unquote(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// SDP screens an offer's RFC 5547 `a=file-selector` attributes.
func (f *IMFilter) SDP(body []byte) Verdict {
	for _, l := range strings.Split(string(body), "\n") {
		l = strings.TrimRight(l, "\r")
		sel, ok := strings.CutPrefix(l, "a=file-selector")
		if !ok {
			continue
		}
		m := fileSelectorName.FindStringSubmatch(strings.TrimPrefix(sel, ":"))
		if m == nil {
			// An offer whose name cannot be read could be any file: with a
			// file filter on, it does not pass.
			if f.cfg.Files.Mode != "off" {
				return Verdict{Action: ActionBlock, Reason: "file (unreadable name)"}
			}
			continue
		}
		if v, blocked := f.file(unquote(m[1])); blocked {
			return v
		}
	}
	return Verdict{}
}

// file decides on one offered file name.
func (f *IMFilter) file(name string) (Verdict, bool) {
	switch f.cfg.Files.Mode {
	case "block_all":
		return Verdict{Action: ActionBlock, Reason: "file transfer"}, true
	case "extensions":
		base := strings.ToLower(strings.TrimRight(name, " ."))
		if i := strings.LastIndexByte(base, '.'); i >= 0 && f.exts[base[i:]] {
			return Verdict{Action: ActionBlock, Reason: "file " + safe(name)}, true
		}
	}
	return Verdict{}, false
}

// safe keeps a name fit for a reason phrase: printable, no quotes or
// backslashes, at most 64 characters.
func safe(s string) string {
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= 64 {
			b.WriteString("...")
			break
		}
		if r < 0x20 || r == 0x7f || r == '"' || r == '\\' || r == utf8.RuneError {
			r = '_'
		}
		b.WriteRune(r)
	}
	return b.String()
}
