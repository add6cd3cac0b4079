//go:build linux

// Package rawtcp reads and writes a TCP connection with system calls the Go
// scheduler does not see.
//
// A read or write through net.Conn enters the kernel with entersyscall:
// the goroutine's P is marked as in a system call, and sysmon, the runtime's
// monitor thread, hands such a P to another thread when the call lasts over
// a tick (20 µs), and is itself woken from its deep sleep by the first
// system call after every moment the process had nothing to run. A
// loopback TCP write on a VM takes about that long (the kernel delivers the
// segment to the receiver inside the call), so under a steady SIP load the
// process paid for sysmon's wake-ups and the thread hand-offs they cause:
// a fifth of the CPU in thread switches, sysmon alone a tenth
// (bench/sip/README.md).
//
// A non-blocking socket's read and write never wait, so they can be made
// as raw calls from Go code, as the relay's data plane does: the P stays
// with the thread for the few microseconds of the call, and no one is
// woken. When the socket is not ready the call says EAGAIN and the
// goroutine waits in the netpoller as before (syscall.RawConn), deadlines
// included.
package rawtcp

import (
	"errors"
	"io"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Conn is a *net.TCPConn whose Read and Write are raw system calls.
type Conn struct {
	*net.TCPConn
	rc syscall.RawConn
}

// Wrap returns c with raw reads and writes when it is a TCP connection, c
// itself otherwise.
func Wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &Conn{TCPConn: tc, rc: rc}
}

// Read reads what the socket holds, waiting in the netpoller while it holds
// nothing.
func (c *Conn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := c.rc.Read(func(fd uintptr) bool {
		n, errno = rawRW(unix.SYS_READ, fd, b)
		return errno != syscall.EAGAIN
	})
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case errno != 0:
		return 0, c.opError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of b, waiting in the netpoller while the socket's send
// buffer is full.
func (c *Conn) Write(b []byte) (int, error) {
	written := 0
	var errno syscall.Errno
	err := c.rc.Write(func(fd uintptr) bool {
		for written < len(b) {
			var n int
			n, errno = rawRW(unix.SYS_WRITE, fd, b[written:])
			if errno == syscall.EINTR {
				continue
			}
			if errno != 0 {
				return errno != syscall.EAGAIN
			}
			written += n
		}
		return true
	})
	switch {
	case err != nil:
		return written, c.opError("write", err)
	case errno != 0 && errno != syscall.EAGAIN:
		return written, c.opError("write", errno)
	}
	return written, nil
}

func (c *Conn) opError(op string, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) { // the RawConn's own ("raw-read"): its cause is the error
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// maxRW caps one call, as internal/poll does (large reads and writes
// fail on some systems).
const maxRW = 1 << 30

func rawRW(trap, fd uintptr, b []byte) (int, syscall.Errno) {
	if len(b) > maxRW {
		b = b[:maxRW]
	}
	for {
		r, _, e := syscall.RawSyscall(trap, fd, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(r), 0
	}
}
