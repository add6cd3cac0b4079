package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"portcullis/internal/config"
)

type turn struct {
	Realm    string        `yaml:"realm"`
	Lifetime time.Duration `yaml:"lifetime"`
	Port     int           `yaml:"port"`
}

type partner struct {
	Domain string `yaml:"domain"`
}

type sample struct {
	Name     string    `yaml:"name"`
	Turn     turn      `yaml:"turn"`
	Partners []partner `yaml:"partners"`
	Tags     []string  `yaml:"tags"`
}

func (s *sample) Validate(v *config.V) {
	tv := v.In("turn")
	tv.CheckNotEmpty("realm", s.Turn.Realm)
	tv.Check(s.Turn.Port > 0, "port", "must be positive")
	for i, p := range s.Partners {
		v.In("partners["+config.Itoa(i)+"]").CheckNotEmpty("domain", p.Domain)
	}
}

func decode(t *testing.T, src string) (*sample, error) {
	t.Helper()
	s := &sample{Name: "default", Turn: turn{Port: 3478, Lifetime: time.Hour}}
	err := config.Decode("configs/edge.yaml", []byte(src), s)
	return s, err
}

func problems(t *testing.T, err error) []string {
	t.Helper()
	var ce *config.Error
	if !errors.As(err, &ce) || !errors.Is(err, config.ErrInvalid) {
		t.Fatalf("want *config.Error, got %v", err)
	}
	out := make([]string, len(ce.Problems))
	for i, p := range ce.Problems {
		out[i] = p.String()
	}
	return out
}

func TestDecodeKeepsDefaultsAndDecodesValues(t *testing.T) {
	s, err := decode(t, "turn:\n  realm: example.test\n  lifetime: 10m\ntags: [a, b]\npartners:\n  - domain: partner.test\n")
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != "default" || s.Turn.Port != 3478 || s.Turn.Lifetime != 10*time.Minute || s.Turn.Realm != "example.test" ||
		len(s.Tags) != 2 || s.Partners[0].Domain != "partner.test" {
		t.Fatalf("decoded %+v", s)
	}
}

func TestErrorsNameFileLineAndKey(t *testing.T) {
	src := strings.Join([]string{
		"name: x",            // 1
		"turn:",              // 2
		"  realm: \"\"",      // 3
		"  lifetime: soon",   // 4
		"  relam: typo",      // 5
		"partners:",          // 6
		"  - domain: a.test", // 7
		"  - domian: b.test", // 8
		"extra: 1",           // 9
	}, "\n")
	_, err := decode(t, src)
	got := problems(t, err)
	want := []string{
		"configs/edge.yaml:3: turn.realm: must not be empty",
		"configs/edge.yaml:4: turn.lifetime: cannot unmarshal !!str `soon` into time.Duration",
		"configs/edge.yaml:5: turn.relam: unknown key",
		"configs/edge.yaml:8: partners[1].domian: unknown key",
		"configs/edge.yaml:8: partners[1].domain: must not be empty",
		"configs/edge.yaml:9: extra: unknown key",
	}
	if len(got) != len(want) {
		t.Fatalf("got %d problems %q", len(got), got)
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("problem %d = %q, want prefix %q", i, got[i], want[i])
		}
	}
	// The key that failed to decode is not reported again by validation.
	if _, err := decode(t, "turn:\n  realm: r\n  port: many\n"); len(problems(t, err)) != 1 {
		t.Fatalf("port reported twice: %q", problems(t, err))
	}
}

func has(got []string, prefix string) bool {
	for _, g := range got {
		if strings.HasPrefix(g, prefix) {
			return true
		}
	}
	return false
}

func TestValidationErrorsCarryLines(t *testing.T) {
	_, err := decode(t, "name: x\nturn:\n  realm: \"\"\n  port: 0\npartners:\n  - domain: \"\"\n")
	got := problems(t, err)
	want := []string{
		"configs/edge.yaml:3: turn.realm: must not be empty",
		"configs/edge.yaml:4: turn.port: must be positive",
		"configs/edge.yaml:6: partners[0].domain: must not be empty",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// A key absent from the file is reported against its section's line.
	_, err = decode(t, "name: x\nturn:\n  port: 1\n")
	if got := problems(t, err); !has(got, "configs/edge.yaml:2: turn.realm: must not be empty") {
		t.Fatalf("got %q", got)
	}
}

func TestBadShapesAndSyntax(t *testing.T) {
	for src, want := range map[string]string{
		"turn: [1, 2]\n":            "configs/edge.yaml:1: turn: must be a mapping of keys, not a list",
		"turn:\n  realm: a\n realm": "configs/edge.yaml:2: did not find expected key",
		"just text\n":               "configs/edge.yaml:1: must be a mapping of keys",
		"name: x\nname: y\n":        "configs/edge.yaml:2: name: duplicate key",
		"turn:\n  port: many\n":     "configs/edge.yaml:2: turn.port: cannot unmarshal",
	} {
		_, err := decode(t, src)
		if got := problems(t, err); !has(got, want) {
			t.Errorf("%q: got %q, want one with prefix %q", src, got, want)
		}
	}
}

func TestLoadUnreadableFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.yaml")
	err := config.Load(missing, &sample{})
	if got := problems(t, err); !strings.HasPrefix(got[0], missing+": cannot read:") {
		t.Fatalf("got %q", got)
	}
	dir := t.TempDir()
	f := filepath.Join(dir, "locked.yaml")
	if err := os.WriteFile(f, []byte("name: x\n"), 0o000); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 { // root reads anything
		if got := problems(t, config.Load(f, &sample{})); !strings.Contains(got[0], "permission denied") {
			t.Fatalf("got %q", got)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte("turn:\n  realm: x\n  port: 1\n"))
	f.Add([]byte("partners:\n  - domain: a\n  - {domain: b}\n"))
	f.Add([]byte("a: &x {realm: 1}\nturn: *x\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := &sample{}
		err := config.Decode("f.yaml", data, s)
		var ce *config.Error
		if err != nil && !errors.As(err, &ce) {
			t.Fatalf("non-config error %v", err)
		}
	})
}

func TestMergeKeys(t *testing.T) {
	s, err := decode(t, "x-common: &c\n  realm: example.test\n")
	if err == nil {
		t.Fatalf("unknown top-level anchor holder accepted: %+v", s)
	}
	type withAnchors struct {
		Common turn `yaml:"common"`
		Turn   turn `yaml:"turn"`
	}
	var w withAnchors
	if err := config.Decode("m.yaml", []byte("common: &c\n  realm: example.test\nturn:\n  <<: *c\n  port: 5\n"), &w); err != nil {
		t.Fatal(err)
	}
	if w.Turn.Realm != "example.test" || w.Turn.Port != 5 {
		t.Fatalf("merged %+v", w.Turn)
	}
}
