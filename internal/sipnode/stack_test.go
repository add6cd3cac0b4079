package sipnode

import "testing"

// GrowStack must reserve stack, not heap: if its buffer escaped, every
// request would allocate 8 KiB instead.
func TestGrowStackDoesNotAllocate(t *testing.T) {
	if n := testing.AllocsPerRun(100, GrowStack); n != 0 {
		t.Fatalf("GrowStack allocates %v times per call", n)
	}
}
