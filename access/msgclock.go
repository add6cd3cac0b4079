package access

import "bytes"

// msgClock follows SIP message boundaries on a stream connection (RFC 3261
// §18.3: a header ended by an empty line, then Content-Length bytes of
// body) just closely enough to say whether a message has begun and not yet
// ended. The listener uses it for slow-read protection: a message that has
// begun must be complete within the message timeout, however slowly its
// bytes trickle in (an idle timeout per read alone lets a peer hold a
// connection by sending one byte per timeout). CRLF keep-alives (RFC 5626
// §3.5.1) between messages are not a message.
//
// It does not validate anything: the SIP parser downstream does. A
// Content-Length it cannot read counts as 0, which can only end a message
// early in its eyes (the timeout is then not applied to that body).
type msgClock struct {
	state   uint8 // between, header or body
	line    [lineKeep]byte
	lineLen int   // bytes of the current header line (only the first lineKeep kept)
	clen    int64 // Content-Length of the current message
	body    int64 // body bytes still expected
	size    int64 // the current message's size as known: header bytes so far, plus its Content-Length once the header is complete
	peak    int64 // the largest size since the caller last cleared it (several messages can pass in one feed)
}

const (
	between = iota
	header
	body

	lineKeep = 64 // enough for any sane Content-Length line
	maxBody  = 1 << 30
)

// feed consumes b and reports whether a message is in progress after it,
// and whether that message began within b (so that its clock starts now).
func (m *msgClock) feed(b []byte) (inMessage, began bool) {
	for len(b) > 0 {
		switch m.state {
		case between:
			c := b[0]
			b = b[1:]
			if c == '\r' || c == '\n' {
				continue
			}
			m.state, m.clen, m.lineLen, began = header, 0, 0, true
			m.line[0], m.lineLen, m.size = c, 1, 1
		case header:
			i := bytes.IndexByte(b, '\n')
			part := b
			if i >= 0 {
				part = b[:i]
			}
			if m.lineLen < lineKeep {
				copy(m.line[m.lineLen:], part)
			}
			m.lineLen += len(part)
			m.size += int64(len(part))
			if i < 0 {
				m.peak = max(m.peak, m.size)
				return true, began
			}
			m.size++ // the LF
			m.peak = max(m.peak, m.size)
			b = b[i+1:]
			n := m.lineLen
			m.lineLen = 0
			if n > lineKeep {
				continue // a long line: not a Content-Length this can read
			}
			if n > 0 && m.line[n-1] == '\r' {
				n--
			}
			if n > 0 {
				if v, ok := contentLength(m.line[:n]); ok {
					m.clen = v
				}
				continue
			}
			// The empty line: the header is complete.
			m.state, m.body = body, m.clen
			m.size += m.clen
			m.peak = max(m.peak, m.size)
			if m.body == 0 {
				m.state = between
			}
		case body:
			k := int64(len(b))
			if k > m.body {
				k = m.body
			}
			b = b[k:]
			if m.body -= k; m.body == 0 {
				m.state = between
			}
		}
	}
	return m.state != between, began && m.state != between
}

// contentLength reads a Content-Length (or compact "l") header line.
func contentLength(line []byte) (int64, bool) {
	i := 0
	for i < len(line) && line[i] != ':' && line[i] != ' ' && line[i] != '\t' {
		i++
	}
	name := line[:i]
	if !(len(name) == 1 && (name[0]|0x20) == 'l') && !bytes.EqualFold(name, []byte("content-length")) {
		return 0, false
	}
	for i < len(line) && (line[i] == ' ' || line[i] == '\t') {
		i++
	}
	if i == len(line) || line[i] != ':' {
		return 0, false
	}
	i++
	for i < len(line) && (line[i] == ' ' || line[i] == '\t') {
		i++
	}
	var v int64
	digits := 0
	for ; i < len(line) && line[i] >= '0' && line[i] <= '9'; i++ {
		if v = v*10 + int64(line[i]-'0'); v > maxBody {
			return 0, false
		}
		digits++
	}
	return v, digits > 0
}
