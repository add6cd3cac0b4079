// Package devmode runs the core and the edge in one process on loopback with
// a generated private CA and the embedded store in one data folder.
package devmode

import (
	"crypto/rand"
	"encoding/hex"
	"io"
	"strings"

	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"portcullis/core/store"
	"time"

	"portcullis/access"
	"portcullis/configs"
	"portcullis/core"
	"portcullis/edge"
	"portcullis/internal/config"
	"portcullis/internal/flock"
	"portcullis/internal/lifecycle"
	"portcullis/internal/ops"
)

// Config is configs/dev.yaml: a core and an edge config.
type Config struct {
	Core core.Config `yaml:"core"`
	Edge edge.Config `yaml:"edge"`
}

// Validate checks both.
func (c *Config) Validate(v *config.V) {
	c.Core.Validate(v.In("core"))
	c.Edge.Validate(v.In("edge"))
}

// Options are the `portcullis dev` flags.
type Options struct {
	DataDir    string
	ConfigFile string // "" for the built-in configs/dev.yaml
	Log        *slog.Logger
	Level      *slog.LevelVar
	Signals    <-chan os.Signal // tests
	// Out receives the servers' logs and the dev users' passwords
	// (default os.Stderr).
	Out io.Writer
	// Ready is called once both servers are up and the edge's link to the
	// core answers, with the endpoints file's contents.
	Ready func(Endpoints)
}

func (o Options) out() io.Writer {
	if o.Out == nil {
		return os.Stderr
	}
	return o.Out
}

// Endpoints is DIR/endpoints.json.
type Endpoints struct {
	PID          int    `json:"pid"`
	DeploymentID string `json:"deployment_id"`
	CAFile       string `json:"ca_file"`
	// TURNSecretFile is the relay's shared secret (dev only): `portcullis
	// turn-cred --data DIR` reads it.
	TURNSecretFile string     `json:"turn_secret_file,omitempty"`
	Listeners      []Listener `json:"listeners"`
}

// Listener is one listening socket.
type Listener struct {
	Role     string `json:"role"`
	Protocol string `json:"protocol"`
	Address  string `json:"address"`
}

// EndpointsFile is the name of the endpoints file in the data folder.
const EndpointsFile = "endpoints.json"

// ErrInUse is returned when another process uses the data folder.
var ErrInUse = errors.New("data folder is in use by another portcullis dev")

// LoadConfig reads the dev configuration and resolves it into dataDir.
func LoadConfig(file, dataDir string) (Config, error) {
	c := Config{Core: core.DefaultConfig(), Edge: edge.DefaultConfig()}
	data, name := configs.Dev, "configs/dev.yaml (built in)"
	if file != "" {
		var err error
		if data, err = os.ReadFile(file); err != nil {
			return c, &config.Error{Problems: []config.Problem{{File: file, Msg: "cannot read: " + err.Error()}}}
		}
		name = file
	}
	if err := config.Decode(name, data, &c); err != nil {
		return c, err
	}
	c.Core.Resolve(dataDir)
	c.Edge.Resolve(dataDir)
	return c, nil
}

// Run runs dev mode until ctx ends or a stop signal arrives.
func Run(ctx context.Context, o Options) error {
	dir, err := filepath.Abs(o.DataDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	lock, err := flock.Acquire(filepath.Join(dir, ".lock"))
	if err != nil {
		if errors.Is(err, flock.ErrLocked) {
			return fmt.Errorf("%w: %s: %v", ErrInUse, dir, err)
		}
		return err
	}
	defer lock.Release()

	cfg, err := LoadConfig(o.ConfigFile, dir)
	if err != nil {
		return err
	}
	if err := ensurePKI(cfg, o.Log); err != nil {
		return err
	}
	for _, f := range []string{cfg.Edge.TURN.SecretFile, cfg.Core.TURN.SecretFile} {
		if err := ensureSecret(f, o.Log); err != nil {
			return err
		}
	}
	coreLevel, edgeLevel := levelVar(cfg.Core.Log.Level), levelVar(cfg.Edge.Log.Level)
	coreSrv, err := core.Start(ctx, cfg.Core, lifecycle.Deps{Log: lifecycle.NewLogger(o.out(), coreLevel).With("service", "portcullis-core"), Level: coreLevel, Registry: ops.NewRegistry()})
	if err != nil {
		return fmt.Errorf("core: %w", err)
	}
	edgeSrv, err := edge.Start(cfg.Edge, lifecycle.Deps{Log: lifecycle.NewLogger(o.out(), edgeLevel).With("service", "portcullis-edge"), Level: edgeLevel, Registry: ops.NewRegistry()})
	if err != nil {
		coreSrv.Close()
		return fmt.Errorf("edge: %w", err)
	}
	id, err := coreSrv.Store().DeploymentID(ctx)
	if err != nil {
		edgeSrv.Close()
		coreSrv.Close()
		return err
	}
	if err := seedUsers(ctx, coreSrv, dir, o.out(), o.Log); err != nil {
		edgeSrv.Close()
		coreSrv.Close()
		return err
	}
	coreSIP, coreOps := coreSrv.Addr()
	edgeSIP, edgeOps := edgeSrv.Addr()
	ep := Endpoints{PID: os.Getpid(), DeploymentID: id, CAFile: cfg.Core.TLS.CAFile, Listeners: []Listener{
		{Role: "core", Protocol: "sip-mtls", Address: coreSIP},
		{Role: "core", Protocol: "http-metrics-health", Address: coreOps},
		{Role: "core", Protocol: "https-api", Address: coreSrv.HTTPSAddr()},
		{Role: "core", Protocol: "sip-tls-users", Address: coreSrv.UsersAddr()},
		{Role: "edge", Protocol: "sip-mtls-internal", Address: edgeSIP},
		{Role: "edge", Protocol: "sip-tls-external", Address: edgeSrv.ExternalAddr()},
		{Role: "edge", Protocol: "http-metrics-health", Address: edgeOps},
	}}
	if r := edgeSrv.Relay(); r != nil {
		for _, l := range r.Listeners() {
			ep.Listeners = append(ep.Listeners, Listener{Role: "edge", Protocol: l.Protocol, Address: l.Address})
		}
		ep.TURNSecretFile = cfg.Edge.TURN.SecretFile
	}
	epFile := filepath.Join(dir, EndpointsFile)
	if err := writeJSON(epFile, ep); err != nil {
		edgeSrv.Close()
		coreSrv.Close()
		return err
	}
	defer os.Remove(epFile)

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go announce(runCtx, edgeSrv, ep, epFile, o)

	current := cfg
	return lifecycle.Run(ctx, lifecycle.Options{
		Log:     o.Log,
		Signals: o.Signals,
		DrainTimeout: func() time.Duration {
			return max(current.Core.Shutdown.DrainTimeout, current.Edge.Shutdown.DrainTimeout)
		},
		Reload: func() error {
			next, err := LoadConfig(o.ConfigFile, dir)
			if err != nil {
				coreSrv.ReloadRejected()
				edgeSrv.ReloadRejected()
				return err
			}
			if err := errors.Join(coreSrv.Reload(next.Core), edgeSrv.Reload(next.Edge)); err != nil {
				return err
			}
			current = next
			return nil
		},
	}, lifecycle.Group{edgeSrv, coreSrv})
}

// announce logs the one "ready" line once the edge's link to the core is up.
func announce(ctx context.Context, e *edge.Server, ep Endpoints, epFile string, o Options) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for e.Ready() != nil {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
	o.Log.Info("portcullis dev ready", "endpoints", epFile, "ca_file", ep.CAFile, "deployment_id", ep.DeploymentID)
	if o.Ready != nil {
		o.Ready(ep)
	}
}

func levelVar(name string) *slog.LevelVar {
	v := new(slog.LevelVar)
	l, _ := lifecycle.ParseLevel(name)
	v.Set(l)
	return v
}

// ensurePKI creates the CA and the two node certificates the config names,
// when they are missing. Existing files are kept.
func ensurePKI(cfg Config, log *slog.Logger) error {
	caDir := filepath.Dir(cfg.Core.TLS.CAFile)
	if cfg.Edge.TLS.CAFile != cfg.Core.TLS.CAFile || filepath.Base(cfg.Core.TLS.CAFile) != access.CACertFile {
		return fmt.Errorf("dev mode: core and edge must share one CA file named %s", access.CACertFile)
	}
	ca, err := access.LoadCA(caDir)
	if errors.Is(err, access.ErrNoCA) {
		if ca, err = access.InitCA(caDir, "Portcullis dev CA", 10*365*24*time.Hour); err == nil {
			log.Info("created dev CA", "dir", caDir)
		}
	}
	if err != nil {
		return err
	}
	for _, n := range []struct {
		files access.TLSFiles
		name  string
	}{{cfg.Core.TLS, cfg.Core.SIP.Hostname}, {cfg.Edge.TLS, cfg.Edge.Internal.Hostname}} {
		if _, err := os.Stat(n.files.CertFile); err == nil {
			continue
		}
		err := ca.IssueFiles(n.files.CertFile, n.files.KeyFile, access.IssueRequest{
			Name: n.name, SANs: []string{n.name, "127.0.0.1", "::1"},
			Usage: access.UsageServer | access.UsageClient,
		})
		if err != nil {
			return err
		}
		log.Info("issued dev certificate", "name", n.name, "cert", n.files.CertFile)
	}
	return nil
}

// ensureSecret creates the TURN shared secret when it is missing.
func ensureSecret(file string, log *slog.Logger) error {
	if file == "" {
		return nil
	}
	if _, err := os.Stat(file); err == nil {
		return nil
	}
	if err := access.NewTURNSecret(file); err != nil {
		return err
	}
	log.Info("created TURN shared secret", "file", file)
	return nil
}

// SecretFile is where dev mode keeps the TURN secret in dataDir.
func SecretFile(dataDir string) (string, error) {
	cfg, err := LoadConfig("", dataDir)
	if err != nil {
		return "", err
	}
	return cfg.Edge.TURN.SecretFile, nil
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// UsersFile lists the dev users and their passwords (dev mode only).
const UsersFile = "dev-users.txt"

var devUsers = []string{"sip:alice@example.test", "sip:bob@example.test", "sip:carol@example.test"}

// seedUsers creates the demo users with random passwords the first time,
// writes them to DIR/dev-users.txt (0600) and prints them once.
func seedUsers(ctx context.Context, c *core.Server, dir string, out io.Writer, log *slog.Logger) error {
	file := filepath.Join(dir, UsersFile)
	if _, err := os.Stat(file); err == nil {
		return nil
	}
	var b strings.Builder
	for _, aor := range devUsers {
		pw := randomPassword()
		err := core.AddUser(ctx, c.Store(), aor, pw)
		if errors.Is(err, store.ErrUserExists) {
			err = core.SetPassword(ctx, c.Store(), aor, pw)
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %s\n", aor, pw)
	}
	if err := os.WriteFile(file, []byte(b.String()), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(out, "dev users (kept in %s):\n%s", file, b.String())
	log.Info("dev users created", "file", file, "users", devUsers)
	return nil
}

func randomPassword() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// UserPassword reads a dev user's password from DIR/dev-users.txt.
func UserPassword(dir, aor string) (string, error) {
	data, err := os.ReadFile(filepath.Join(dir, UsersFile))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if u, pw, ok := strings.Cut(line, " "); ok && u == aor {
			return pw, nil
		}
	}
	return "", fmt.Errorf("%s is not in %s", aor, filepath.Join(dir, UsersFile))
}

// ReadEndpoints reads DIR/endpoints.json (while dev mode runs).
func ReadEndpoints(dir string) (Endpoints, error) {
	var ep Endpoints
	data, err := os.ReadFile(filepath.Join(dir, EndpointsFile))
	if err != nil {
		return ep, fmt.Errorf("%w (is `portcullis dev --data %s` running?)", err, dir)
	}
	return ep, json.Unmarshal(data, &ep)
}
