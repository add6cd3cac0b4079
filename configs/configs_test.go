package configs_test

import (
	"path/filepath"
	"testing"

	"portcullis/core"
	"portcullis/edge"
	"portcullis/internal/devmode"
)

// Every file in configs/ is loaded and validated by the loader of the
// binary it belongs to; a new file without a loader here fails the test.
func TestEveryExampleConfigLoadsAndValidates(t *testing.T) {
	loaders := map[string]func(string) error{
		"core.yaml": func(f string) error { _, err := core.LoadConfig(f); return err },
		"edge.yaml": func(f string) error { _, err := edge.LoadConfig(f); return err },
		"dev.yaml":  func(f string) error { _, err := devmode.LoadConfig(f, t.TempDir()); return err },
	}
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(loaders) {
		t.Fatalf("configs/ holds %v; every file needs a loader in this test", files)
	}
	for _, f := range files {
		load, ok := loaders[f]
		if !ok {
			t.Errorf("%s: no loader", f)
			continue
		}
		if err := load(f); err != nil {
			t.Errorf("%s:\n%v", f, err)
		}
	}
	// The built-in dev configuration is the same file.
	if _, err := devmode.LoadConfig("", t.TempDir()); err != nil {
		t.Errorf("built-in dev config: %v", err)
	}
}
