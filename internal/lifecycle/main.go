package lifecycle

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"portcullis/internal/ops"
)

// Deps are what a binary hands the server it starts.
type Deps struct {
	Log      *slog.Logger
	Level    *slog.LevelVar // the server's log level; reload changes it
	Registry *prometheus.Registry
}

// Exit codes shared by the binaries.
const (
	ExitOK      = 0
	ExitFailed  = 1 // could not start or stopped with an error
	ExitInvalid = 2 // the configuration is unreadable or invalid
)

// Reloadable is a started server that takes a new configuration.
type Reloadable[C any] interface {
	Service
	Reload(C) error
	ReloadRejected()
}

// Program describes one server binary.
type Program[C any] struct {
	Name string
	// Load reads and validates a config file (errors as *config.Error).
	Load func(file string) (C, error)
	// Preflight checks what only the machine can tell (certificate files).
	Preflight func(C) error
	// Level and DrainTimeout read settings every server has.
	Level        func(C) string
	DrainTimeout func(C) time.Duration
	Start        func(context.Context, C, Deps) (Reloadable[C], error)
	// Wire, if set, is called with the process logger before Start.
	Wire func(*slog.Logger)
}

// Main parses --config and --check, then checks or runs the server.
func (p Program[C]) Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(p.Name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("config", "/etc/portcullis/"+p.Name[len("portcullis-"):]+".yaml", "configuration file")
	check := fs.Bool("check", false, "validate the configuration and its certificate files, then exit (0 valid, 2 invalid)")
	if err := fs.Parse(args); err != nil {
		return ExitInvalid
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n", p.Name, fs.Arg(0))
		return ExitInvalid
	}
	cfg, err := p.Load(*file)
	if err == nil {
		err = p.Preflight(cfg)
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return ExitInvalid
	}
	if *check {
		fmt.Fprintf(stdout, "%s: configuration is valid\n", *file)
		return ExitOK
	}

	level := new(slog.LevelVar)
	l, _ := ParseLevel(p.Level(cfg))
	level.Set(l)
	log := NewLogger(stderr, level).With("service", p.Name)
	if p.Wire != nil {
		p.Wire(log)
	}
	deps := Deps{Log: log, Level: level, Registry: ops.NewRegistry()}
	srv, err := p.Start(ctx, cfg, deps)
	if err != nil {
		log.Error("start failed", "error", err)
		return ExitFailed
	}
	current := cfg
	err = Run(ctx, Options{
		Log:          log,
		DrainTimeout: func() time.Duration { return p.DrainTimeout(current) },
		Reload: func() error {
			next, err := p.Load(*file)
			if err == nil {
				err = p.Preflight(next)
			}
			if err != nil {
				srv.ReloadRejected()
				return err
			}
			if err := srv.Reload(next); err != nil {
				return err
			}
			current = next
			return nil
		},
	}, srv)
	if err != nil {
		log.Error("stopped with error", "error", err)
		return ExitFailed
	}
	return ExitOK
}
