package stats

import "testing"

func TestPercentiles(t *testing.T) {
	v := make([]float64, 0, 200)
	for i := 200; i > 0; i-- {
		v = append(v, float64(i))
	}
	if p50, p99, max := Percentiles(v); p50 != 101 || p99 != 199 || max != 200 {
		t.Fatalf("p50 %v p99 %v max %v, want 101 199 200", p50, p99, max)
	}
	if v[0] != 200 {
		t.Fatal("the input was reordered")
	}
	if a, b, c := Percentiles([]uint32{7}); a != 7 || b != 7 || c != 7 {
		t.Fatalf("one value: %v %v %v", a, b, c)
	}
	if a, b, c := Percentiles[int64](nil); a != 0 || b != 0 || c != 0 {
		t.Fatal("empty input")
	}
}
