// Package proc reads a server's resident memory and CPU time from /proc,
// for the load tools under bench/.
package proc

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Descriptors is how many file descriptors a process holds; 0 when
// unknown.
func Descriptors(pid int) int64 {
	if pid <= 0 {
		return 0
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0
	}
	return int64(len(ents))
}

// SlabKiB is the kernel's slab memory (Slab in /proc/meminfo) in KiB,
// machine-wide: sockets live there, not in any process's RSS.
func SlabKiB() int64 { return field("/proc/meminfo", "Slab:") }

// RSSKiB is a process's resident memory (VmRSS) in KiB; 0 when unknown.
func RSSKiB(pid int) int64 {
	if pid <= 0 {
		return 0
	}
	return field(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:")
}

// field is the first number on the line of a /proc file that starts with
// key; 0 when there is none.
func field(path, key string) int64 {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, key); ok {
			if f := strings.Fields(v); len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n
			}
		}
	}
	return 0
}

// CPUSeconds is a process's user and system time in seconds; 0 when
// unknown.
func CPUSeconds(pid int) float64 {
	if pid <= 0 {
		return 0
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) start after ')'.
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // USER_HZ is 100 on Linux
}

// Sum adds a reading over several processes.
func Sum[T int64 | float64](pids []int, read func(int) T) T {
	var total T
	for _, pid := range pids {
		total += read(pid)
	}
	return total
}

// ParsePIDs reads a comma-separated list of process IDs (the load tools'
// -pids flag); entries that are not numbers are skipped.
func ParsePIDs(s string) []int {
	var pids []int
	for _, p := range strings.Split(s, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(p)); err == nil {
			pids = append(pids, n)
		}
	}
	return pids
}
