package configs_test

import (
	"os"
	"path/filepath"
	"strings"
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

// The users listener's idle timeout must be longer than the longest
// registration: a registered client may send nothing but its REGISTER
// refresh, and a shorter timeout would cut its flow and its calls.
func TestCoreIdleTimeoutLongerThanRegistrations(t *testing.T) {
	b, err := os.ReadFile("core.yaml")
	if err != nil {
		t.Fatal(err)
	}
	short := strings.Replace(string(b), "idle_timeout: 2h15m", "idle_timeout: 10m", 1)
	if short == string(b) {
		t.Fatal("core.yaml no longer sets sip.users_limits.idle_timeout: 2h15m")
	}
	f := filepath.Join(t.TempDir(), "core.yaml")
	if err := os.WriteFile(f, []byte(short), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = core.LoadConfig(f)
	if err == nil || !strings.Contains(err.Error(), "sip.users_limits.idle_timeout") || !strings.Contains(err.Error(), "registrar.max_expires") {
		t.Fatalf("a 10m idle timeout with 2h registrations: %v", err)
	}
}
