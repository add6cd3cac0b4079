package config

import (
	"net"
	"strconv"
)

// CheckHostPort records a problem unless s is host:port with a usable port.
// Port 0 is accepted only when allowZero is set (tests bind ephemeral ports).
func (v *V) CheckHostPort(key, s string, allowZero bool) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		v.Errorf(key, "must be host:port, got %q", s)
		return
	}
	_ = host
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 || (n == 0 && !allowZero) {
		v.Errorf(key, "port must be 1-65535, got %q", port)
	}
}

// CheckNotEmpty records "must not be empty" when s is empty.
func (v *V) CheckNotEmpty(key, s string) {
	v.Check(s != "", key, "must not be empty")
}

// Itoa formats a list index for a key path.
func Itoa(i int) string { return strconv.Itoa(i) }
