//go:build linux

package rawtcp

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

func pair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	client, server = Wrap(c), Wrap(s)
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// Bytes written through a raw connection arrive whole and in order, also
// when a write is larger than the socket buffers (the writer waits in the
// netpoller while the reader is slow), and the reader sees EOF when the
// writer closes.
func TestRawReadWrite(t *testing.T) {
	c, s := pair(t)
	if _, ok := c.(*Conn); !ok {
		t.Fatalf("Wrap of a TCP connection: %T", c)
	}
	payload := make([]byte, 16<<20) // far beyond loopback's socket buffers
	if _, err := rand.Read(payload); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		n, err := c.Write(payload)
		if err == nil && n != len(payload) {
			err = io.ErrShortWrite
		}
		if err == nil {
			err = c.(*Conn).CloseWrite()
		}
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond) // let the writer fill the buffers and wait
	var got bytes.Buffer
	buf := make([]byte, 4096)
	for {
		n, err := s.Read(buf)
		got.Write(buf[:n])
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read: %v", err)
		}
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got.Bytes(), payload) {
		t.Fatalf("read %d bytes, not what was written (%d)", got.Len(), len(payload))
	}
	if n, err := s.Read(nil); n != 0 || err != nil {
		t.Errorf("an empty read: %d, %v", n, err)
	}
}

// A read deadline ends a raw read that waits, with the error net.Conn
// users test for; a closed connection's read and write fail.
func TestRawDeadlineAndClose(t *testing.T) {
	c, s := pair(t)
	if err := s.SetReadDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := s.Read(make([]byte, 10))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past its deadline: %v", err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("not a net.Error timeout: %#v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("the deadline did not end the read")
	}
	if err := s.SetReadDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	// A read waiting when the connection is closed ends.
	done := make(chan error, 1)
	go func() {
		_, err := s.Read(make([]byte, 10))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	s.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("read on a closed connection: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a waiting read did not end when the connection closed")
	}
	if _, err := s.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write on a closed connection: %v", err)
	}
	// The peer's writes fail once the reset arrives.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := c.Write([]byte("x")); err != nil {
			var op *net.OpError
			if !errors.As(err, &op) || op.Op != "write" {
				t.Errorf("write error: %#v", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("writes to a closed peer kept succeeding")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Anything but a TCP connection is returned as it is.
func TestWrapOther(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if Wrap(a) != a {
		t.Fatal("a pipe was wrapped")
	}
}
