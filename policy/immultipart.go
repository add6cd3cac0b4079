package policy

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/textproto"
	"strings"
)

// IM filter errors for bodies in parts (multipart/*, RFC 2046).
var (
	ErrMultipartMalformed = errors.New("malformed multipart body")
	ErrTooManyParts       = errors.New("multipart body with too many parts")
	ErrTransferEncoding   = errors.New("body part in a transfer encoding the filter does not read")
)

// maxParts bounds the parts of one multipart body.
const maxParts = 16

// severity orders verdicts: the most severe part decides a multipart
// body's action.
func severity(action string) int {
	switch action {
	case ActionBlock:
		return 3
	case ActionWarn:
		return 2
	case ActionAllow:
		return 1
	}
	return 0
}

// multipart screens every part of a multipart body (Lync sends
// multipart/alternative with a text/plain and a text/html part): a part
// the filter blocks blocks the message, and parts it changes are written
// back in place, decoded (a quoted-printable or base64 part is screened as
// what it decodes to, so that an encoding cannot hide a link).
func (f *IMFilter) multipart(contentType string, body []byte, depth int) (Verdict, error) {
	if depth >= maxNesting {
		return Verdict{}, ErrCPIMTooDeep
	}
	_, params, err := mime.ParseMediaType(contentType)
	boundary := params["boundary"]
	if err != nil || boundary == "" {
		return Verdict{}, ErrMultipartMalformed
	}
	type part struct {
		header textproto.MIMEHeader
		body   []byte
	}
	var parts []part
	var out Verdict
	changed := false
	r := multipart.NewReader(bytes.NewReader(body), boundary)
	for {
		p, err := r.NextRawPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Verdict{}, ErrMultipartMalformed
		}
		if len(parts) == maxParts {
			return Verdict{}, ErrTooManyParts
		}
		raw, err := io.ReadAll(p)
		if err != nil {
			return Verdict{}, ErrMultipartMalformed
		}
		content, err := decodePart(p.Header.Get("Content-Transfer-Encoding"), raw)
		if err != nil {
			return Verdict{}, err
		}
		ct := p.Header.Get("Content-Type")
		if ct == "" {
			ct = "text/plain" // RFC 2046 §5.1: the default in a part
		}
		v, err := f.message(ct, content, depth+1)
		if err != nil {
			return Verdict{}, err
		}
		out.Links += v.Links
		if severity(v.Action) > severity(out.Action) {
			out.Action, out.Reason = v.Action, v.Reason
		}
		h := p.Header
		if v.Changed {
			changed = true
			content = v.Body
			h = textproto.MIMEHeader{}
			for k, vs := range p.Header {
				if !strings.EqualFold(k, "Content-Transfer-Encoding") && !strings.EqualFold(k, "Content-Length") {
					h[k] = vs
				}
			}
		} else {
			content = raw
		}
		parts = append(parts, part{h, content})
	}
	if len(parts) == 0 {
		return Verdict{}, ErrMultipartMalformed
	}
	if !changed || out.Action == ActionBlock {
		return out, nil
	}
	var b bytes.Buffer
	w := multipart.NewWriter(&b)
	if err := w.SetBoundary(boundary); err != nil {
		return Verdict{}, ErrMultipartMalformed
	}
	for _, p := range parts {
		pw, err := w.CreatePart(p.header)
		if err != nil {
			return Verdict{}, ErrMultipartMalformed
		}
		_, _ = pw.Write(p.body)
	}
	_ = w.Close()
	out.Body, out.Changed = b.Bytes(), true
	return out, nil
}

// decodePart undoes a part's Content-Transfer-Encoding (RFC 2045 §6).
func decodePart(cte string, raw []byte) ([]byte, error) {
	switch strings.ToLower(strings.TrimSpace(cte)) {
	case "", "7bit", "8bit", "binary":
		return raw, nil
	case "quoted-printable":
		b, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return nil, ErrTransferEncoding
		}
		return b, nil
	case "base64":
		b, err := io.ReadAll(base64.NewDecoder(base64.StdEncoding, bytes.NewReader(bytes.Map(dropSpace, raw))))
		if err != nil {
			return nil, ErrTransferEncoding
		}
		return b, nil
	}
	return nil, ErrTransferEncoding
}

func dropSpace(r rune) rune {
	switch r {
	case ' ', '\t', '\r', '\n':
		return -1
	}
	return r
}
