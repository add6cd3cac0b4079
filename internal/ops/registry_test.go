package ops

import "testing"

// The registry exports what the servers and the bench tools read from the
// Go runtime beyond the collector's defaults.
func TestRegistryExportsRuntimeMetrics(t *testing.T) {
	mfs, err := NewRegistry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"go_gc_heap_live_bytes": false, "go_gc_cycles_total_gc_cycles_total": false, "go_sched_latencies_seconds": false}
	for _, mf := range mfs {
		if _, ok := want[mf.GetName()]; ok {
			want[mf.GetName()] = true
		}
	}
	for name, found := range want {
		if !found {
			t.Errorf("%s not exported", name)
		}
	}
}
