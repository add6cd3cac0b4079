package access

import (
	"strings"
	"testing"
)

func TestMsgClock(t *testing.T) {
	msg := "MESSAGE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/TLS a;branch=z9hG4bK1\r\nContent-Length:  5\r\n\r\nhello"
	compact := "OPTIONS sip:example.test SIP/2.0\r\nl: 0\r\n\r\n"
	for _, tc := range []struct {
		name   string
		chunks []string
		in     []bool // after each chunk
		began  []bool
	}{
		{"whole message", []string{msg}, []bool{false}, []bool{false}},
		{"keep-alives are not a message", []string{"\r\n\r\n", "\r\n"}, []bool{false, false}, []bool{false, false}},
		{"trickled header", []string{"MESS", "AGE sip:bob", "@example.test SIP/2.0\r\n", "Content-Length: 5\r\n\r", "\n", "hel", "lo"},
			[]bool{true, true, true, true, true, true, false}, []bool{true, false, false, false, false, false, false}},
		{"message then the start of the next", []string{msg + "\r\n" + "OPT"}, []bool{true}, []bool{true}},
		{"compact form, no body", []string{compact, compact[:10]}, []bool{false, true}, []bool{false, true}},
		{"upper case name, tabs", []string{"X sip:a SIP/2.0\r\nCONTENT-LENGTH\t:\t3\r\n\r\nab", "c"}, []bool{true, false}, []bool{true, false}},
		{"no Content-Length: no body", []string{"X sip:a SIP/2.0\r\n\r\n"}, []bool{false}, []bool{false}},
		{"bare LF lines", []string{"X sip:a SIP/2.0\nl: 2\n\nab"}, []bool{false}, []bool{false}},
		{"a long line is not read as Content-Length", []string{"X sip:a SIP/2.0\r\nContent-Length:" + strings.Repeat(" ", 80) + "9\r\n\r\n"}, []bool{false}, []bool{false}},
	} {
		var m msgClock
		for i, c := range tc.chunks {
			in, began := m.feed([]byte(c))
			if in != tc.in[i] || began != tc.began[i] {
				t.Errorf("%s: chunk %d %q: in=%v began=%v, want %v %v", tc.name, i, c, in, began, tc.in[i], tc.began[i])
			}
		}
	}
}

// The size known of the message in progress: its header bytes so far,
// plus its Content-Length once the header is complete (before the body).
func TestMsgClockSize(t *testing.T) {
	head := "MESSAGE sip:bob@example.test SIP/2.0\r\nContent-Length: 1000\r\n\r\n"
	var m msgClock
	m.feed([]byte(head[:20]))
	if m.size != 20 {
		t.Fatalf("part of a header: size %d, want 20", m.size)
	}
	m.feed([]byte(head[20:]))
	if want := int64(len(head) + 1000); m.size != want {
		t.Fatalf("header complete: size %d, want %d (header and declared body)", m.size, want)
	}
	m.feed([]byte("\r\n\r\n")) // inside the body: counted already
	if want := int64(len(head) + 1000); m.size != want {
		t.Fatalf("in the body: size %d, want %d", m.size, want)
	}
	var next msgClock
	next.feed([]byte("OPTIONS sip:a SIP/2.0\r\n\r\nOPT"))
	if next.size != 3 {
		t.Fatalf("a second message begun: size %d, want 3", next.size)
	}
	// A large message that ends within the same read as the start of the
	// next still shows in the peak.
	var both msgClock
	both.feed([]byte("MESSAGE sip:a SIP/2.0\r\nl: 3000\r\n\r\n" + strings.Repeat("x", 3000) + "OPT"))
	if both.size != 3 || both.peak < 3000 {
		t.Fatalf("size %d, peak %d: want 3 and the first message's size", both.size, both.peak)
	}
}

func TestContentLength(t *testing.T) {
	for line, want := range map[string]int64{"Content-Length: 12": 12, "l:7": 7, "L : 0": 0, "content-length:\t65536": 65536} {
		if v, ok := contentLength([]byte(line)); !ok || v != want {
			t.Errorf("%q: %d %v, want %d", line, v, ok, want)
		}
	}
	for _, line := range []string{"Content-Type: 12", "Content-Length: x", "Content-Length 12", "lx: 3", "Content-Length: 99999999999999"} {
		if v, ok := contentLength([]byte(line)); ok {
			t.Errorf("%q: read as %d", line, v)
		}
	}
}

// FuzzMsgClock: any split of any stream gives the same answer as the
// whole stream fed at once, and nothing panics.
func FuzzMsgClock(f *testing.F) {
	f.Add([]byte("MESSAGE sip:b@example.test SIP/2.0\r\nContent-Length: 3\r\n\r\nabcOPTIONS sip:x SIP/2.0\r\n\r\n"), uint8(7))
	f.Add([]byte("\r\n\r\nl: 2\n\nxy"), uint8(1))
	f.Add([]byte("INVITE sip:a SIP/2.0\r\nContent-Length:"+strings.Repeat(" ", 70)+"5\r\n\r\n"), uint8(3))
	f.Fuzz(func(t *testing.T, b []byte, step uint8) {
		var whole msgClock
		wantIn, _ := whole.feed(b)
		var parts msgClock
		k := int(step%16) + 1
		in := false
		for i := 0; i < len(b); i += k {
			in, _ = parts.feed(b[i:min(i+k, len(b))])
		}
		if len(b) > 0 && in != wantIn {
			t.Fatalf("split by %d: in=%v, whole: %v", k, in, wantIn)
		}
		if whole.body < 0 || parts.body < 0 {
			t.Fatal("negative body count")
		}
		if len(b) > 0 && parts.size != whole.size {
			t.Fatalf("split by %d: size %d, whole: %d", k, parts.size, whole.size)
		}
	})
}
