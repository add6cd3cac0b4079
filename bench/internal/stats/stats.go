// Package stats has the summaries the load tools under bench/ report.
package stats

import "slices"

// Percentiles returns the median, the 99th percentile and the maximum of v
// (zeros when v is empty); v is not changed.
func Percentiles[T int64 | uint32 | float64](v []T) (p50, p99, max T) {
	if len(v) == 0 {
		return 0, 0, 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2], s[min(len(s)-1, len(s)*99/100)], s[len(s)-1]
}
